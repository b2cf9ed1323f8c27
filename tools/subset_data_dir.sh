#!/usr/bin/env bash
# Subset a Kaldi data directory (Kaldi utils/subset_data_dir.sh):
#   tools/subset_data_dir.sh [--seed N] <src-dir> <num-utts> <dest-dir>             random utterances
#   tools/subset_data_dir.sh --first <src-dir> <num-utts> <dest-dir>                first utterances
#   tools/subset_data_dir.sh --per-spk <src-dir> <num-per-spk> <dest-dir>           first N of each speaker
#   tools/subset_data_dir.sh --speakers [--seed N] <src-dir> <num-spks> <dest-dir>  random speakers, all utts
#   tools/subset_data_dir.sh --utt-list <list> <src-dir> <dest-dir>
#   tools/subset_data_dir.sh --spk-list <list> <src-dir> <dest-dir>
# Every per-utterance file (wav.scp, utt2spk, feats.scp, utt2num_frames, utt2aug, utt2dur) is filtered;
# spk2utt is regenerated. The random choice is deterministic for a given --seed (default 777).
set -euo pipefail
export LC_ALL=C
mode=random; seed=777; list=
while [ $# -gt 0 ]; do
  case "$1" in
    --first|--per-spk|--per_spk|--speakers) mode=${1#--}; mode=${mode//_/-}; shift ;;
    --seed) seed=$2; shift 2 ;;
    --utt-list|--utt_list|--spk-list|--spk_list) mode=${1#--}; mode=${mode//_/-}; list=$2; shift 2 ;;
    --*) echo "$0: unknown option $1" >&2; exit 1 ;;
    *) break ;;
  esac
done
tools=$(dirname "$0")
if [ -n "$list" ]; then
  [ $# -eq 2 ] || { echo "usage: $0 --$mode <list> <src-dir> <dest-dir>" >&2; exit 1; }
  src=$1; dest=$2; num=
  [ -f "$list" ] || { echo "$0: $list: no such file" >&2; exit 1; }
else
  [ $# -eq 3 ] || { echo "usage: $0 [--first|--per-spk|--speakers] [--seed N] <src-dir> <num> <dest-dir>" >&2; exit 1; }
  src=$1; num=$2; dest=$3
  [[ "$num" =~ ^[0-9]+$ ]] && [ "$num" -gt 0 ] || { echo "$0: <num> must be a positive integer, got '$num'" >&2; exit 1; }
fi
for f in wav.scp utt2spk; do [ -f "$src/$f" ] || { echo "$0: $src/$f: no such file" >&2; exit 1; }; done
[ "$(cd "$src" && pwd)" != "$(mkdir -p "$dest" && cd "$dest" && pwd)" ] || { echo "$0: <dest-dir> must differ from <src-dir>" >&2; exit 1; }
tmp=$(mktemp -d "$dest/.subset.XXXXXX"); trap 'rm -rf "$tmp"' EXIT
# n random lines of stdin, reproducible for a given seed (awk's srand/rand, as Kaldi's shuffle_list.pl)
rand() { awk -v seed="$seed" 'BEGIN { srand(seed) } { printf "%.12f\t%s\n", rand(), $0 }' | sort -k1,1 | \
           head -n "$1" | cut -f2-; }
case $mode in
  random)   cut -d' ' -f1 "$src/utt2spk" | rand "$num" | sort > "$tmp/utts" ;;
  first)    cut -d' ' -f1 "$src/utt2spk" | head -n "$num" > "$tmp/utts" ;;
  per-spk)  "$tools/utt2spk_to_spk2utt.sh" "$src/utt2spk" | \
              awk -v n="$num" '{ for (i = 2; i <= NF && i <= n + 1; i++) print $i }' | sort > "$tmp/utts" ;;
  speakers) "$tools/utt2spk_to_spk2utt.sh" "$src/utt2spk" | cut -d' ' -f1 | rand "$num" | sort > "$tmp/spks"
            awk 'NR == FNR { s[$1]; next } ($2 in s) { print $1 }' "$tmp/spks" "$src/utt2spk" > "$tmp/utts" ;;
  utt-list) cut -d' ' -f1 "$list" | sort -u > "$tmp/utts" ;;
  spk-list) awk 'NR == FNR { s[$1]; next } ($2 in s) { print $1 }' "$list" "$src/utt2spk" > "$tmp/utts" ;;
esac
for f in utt2spk feats.scp utt2num_frames utt2aug utt2dur wav.scp; do
  [ -f "$src/$f" ] && "$tools/filter_scp.sh" "$tmp/utts" "$src/$f" > "$tmp/$f"
done
[ -s "$tmp/utt2spk" ] || { echo "$0: the subset of $src is empty" >&2; exit 1; }
"$tools/utt2spk_to_spk2utt.sh" "$tmp/utt2spk" > "$tmp/spk2utt"
rm -f "$tmp/utts" "$tmp/spks"
for f in $(ls "$tmp" | grep -vx wav.scp) wav.scp; do mv "$tmp/$f" "$dest/$f"; done
echo "$0: $(wc -l < "$dest/utt2spk") utterances of $(wc -l < "$dest/spk2utt") speakers from $src into $dest" >&2
