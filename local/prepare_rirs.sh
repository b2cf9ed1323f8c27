#!/usr/bin/env bash
# RIRS_NOISES (OpenSLR 28) -> data/rirs: the simulated room impulse responses as a Kaldi data directory,
# the source of `memsv augment-data --type reverb`.
#   local/prepare_rirs.sh [--download_dir D] [--raw_dir R] [--rooms "smallroom mediumroom"] <data-dir>
# Kaldi's egs/voxceleb/v2 uses the small and medium simulated rooms (the default); WeSpeaker uses all
# three (--rooms "smallroom mediumroom largeroom"). Keys are <room>/<RoomNNN>/<RoomNNN-NNNNN>.
set -euo pipefail
export LC_ALL=C
download_dir=data/download_data
raw_dir=data/raw_data
rooms="smallroom mediumroom"
. "$(dirname "$0")/../tools/parse_options.sh" || exit 1
[ $# -eq 1 ] || { echo "usage: $0 [--download_dir D] [--raw_dir R] [--rooms 'smallroom ...'] <data-dir>" >&2; exit 1; }
out=$1/rirs
local_dir=$(dirname "$0")
rirs=$raw_dir/RIRS_NOISES
if [ ! -d "$rirs" ]; then
  "$local_dir/check_md5.sh" --require rirs_noises.zip "$download_dir"
  mkdir -p "$raw_dir"
  echo "$0: extracting $download_dir/rirs_noises.zip into $raw_dir" >&2
  unzip -q "$download_dir/rirs_noises.zip" -d "$raw_dir"
fi
rirs=$(cd "$rirs" && pwd)
mkdir -p "$out"
for room in $rooms; do
  [ -d "$rirs/simulated_rirs/$room" ] || { echo "$0: $rirs/simulated_rirs/$room: no such directory" >&2; exit 1; }
  find -L "$rirs/simulated_rirs/$room" -name '*.wav'
done | awk '{ n = split($0, p, "/"); key = p[n-2] "/" p[n-1] "/" p[n]; sub(/\.wav$/, "", key); print key, $0 }' | \
  sort -k1,1 > "$out/wav.scp.tmp"
[ -s "$out/wav.scp.tmp" ] || { echo "$0: no RIR wav files found for rooms: $rooms" >&2; exit 1; }
awk '{ print $1, $1 }' "$out/wav.scp.tmp" > "$out/utt2spk"
cp "$out/utt2spk" "$out/spk2utt"
mv "$out/wav.scp.tmp" "$out/wav.scp"
echo "$0: $out: $(wc -l < "$out/wav.scp") impulse responses ($rooms)" >&2
