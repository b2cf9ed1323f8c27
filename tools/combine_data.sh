#!/usr/bin/env bash
# Combine Kaldi data directories (Kaldi utils/combine_data.sh):
#   tools/combine_data.sh [--extra-files "utt2num_frames feats.scp"] <dest-dir> <src-dir1> <src-dir2> ...
# wav.scp and utt2spk are concatenated (required in every source); each extra file is combined when all
# sources have it. Trials are not combined (they belong to one evaluation set). An utterance id present
# in two sources is an error: give augmented copies a suffix/prefix first. spk2utt is regenerated.
set -euo pipefail
export LC_ALL=C
extra_files="utt2num_frames feats.scp utt2aug utt2dur"
if [ "${1:-}" = --extra-files ] || [ "${1:-}" = --extra_files ]; then extra_files=$2; shift 2; fi
if [ $# -lt 2 ]; then
  echo "usage: $0 [--extra-files 'f1 f2'] <dest-dir> <src-dir1> [<src-dir2> ...]" >&2; exit 1
fi
dest=$1; shift
for src in "$@"; do
  [ "$(cd "$src" 2>/dev/null && pwd)" = "$(mkdir -p "$dest" && cd "$dest" && pwd)" ] && \
    { echo "$0: destination $dest is also a source" >&2; exit 1; }
  for f in wav.scp utt2spk; do
    [ -f "$src/$f" ] || { echo "$0: $src/$f: no such file" >&2; exit 1; }
  done
done
mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.combine.XXXXXX"); trap 'rm -rf "$tmp"' EXIT
for f in wav.scp utt2spk $extra_files; do
  have=0
  for src in "$@"; do [ -f "$src/$f" ] && have=$((have + 1)); done
  if [ $have -eq 0 ]; then rm -f "$dest/$f"; continue; fi
  if [ $have -lt $# ]; then
    echo "$0: not combining $f: only $have of $# sources have it" >&2; rm -f "$dest/$f"; continue
  fi
  for src in "$@"; do cat "$src/$f"; done | sort -k1,1 -s > "$tmp/$f"
  dup=$(cut -d' ' -f1 "$tmp/$f" | uniq -d | head -n 1)
  if [ -n "$dup" ]; then echo "$0: utterance '$dup' appears in more than one source ($f)" >&2; exit 1; fi
done
"$(dirname "$0")/utt2spk_to_spk2utt.sh" "$tmp/utt2spk" > "$tmp/spk2utt"
# wav.scp last: it marks the directory complete
for f in $(ls "$tmp" | grep -vx wav.scp) wav.scp; do mv "$tmp/$f" "$dest/$f"; done
echo "$0: combined $# directories into $dest ($(wc -l < "$dest/utt2spk") utterances, $(wc -l < "$dest/spk2utt") speakers)" >&2
