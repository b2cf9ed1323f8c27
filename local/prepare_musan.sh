#!/usr/bin/env bash
# MUSAN (OpenSLR 17) -> data/musan_{noise,music,speech}: one Kaldi data directory per category, the
# sources of `memsv augment-data --type noise|music|babble`.
#   local/prepare_musan.sh [--download_dir data/download_data] [--raw_dir data/raw_data] <data-dir>
# Extracts DOWNLOAD_DIR/musan.tar.gz into RAW_DIR/musan unless RAW_DIR/musan already exists.
# Keys are the file names without .wav (MUSAN's names are unique), utt2spk maps each key to itself.
set -euo pipefail
export LC_ALL=C
download_dir=data/download_data
raw_dir=data/raw_data
. "$(dirname "$0")/../tools/parse_options.sh" || exit 1
[ $# -eq 1 ] || { echo "usage: $0 [--download_dir D] [--raw_dir R] <data-dir>" >&2; exit 1; }
data=$1
local_dir=$(dirname "$0")
musan=$raw_dir/musan
if [ ! -d "$musan" ]; then
  "$local_dir/check_md5.sh" --require musan.tar.gz "$download_dir"
  mkdir -p "$raw_dir"
  echo "$0: extracting $download_dir/musan.tar.gz into $raw_dir" >&2
  tar -xzf "$download_dir/musan.tar.gz" -C "$raw_dir"
fi
musan=$(cd "$musan" && pwd)
for kind in noise music speech; do
  [ -d "$musan/$kind" ] || { echo "$0: $musan/$kind: no such directory" >&2; exit 1; }
  out=$data/musan_$kind
  mkdir -p "$out"
  find -L "$musan/$kind" -name '*.wav' | awk '{ n = split($0, p, "/"); key = p[n]; sub(/\.wav$/, "", key);
                                             print key, $0 }' | sort -k1,1 > "$out/wav.scp.tmp"
  [ -s "$out/wav.scp.tmp" ] || { echo "$0: no wav files under $musan/$kind" >&2; exit 1; }
  awk '{ print $1, $1 }' "$out/wav.scp.tmp" > "$out/utt2spk"
  cp "$out/utt2spk" "$out/spk2utt"
  mv "$out/wav.scp.tmp" "$out/wav.scp"
  echo "$0: $out: $(wc -l < "$out/wav.scp") recordings" >&2
done
