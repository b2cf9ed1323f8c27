#!/usr/bin/env bash
# utt2spk (stdin or $1) -> spk2utt (stdout), speakers and utterances in C-locale order (Kaldi format).
set -euo pipefail
export LC_ALL=C
cat "${1:-/dev/stdin}" | sort -k2,2 -k1,1 | \
  awk '{ if ($2 != spk) { if (NR > 1) printf "\n"; spk = $2; printf "%s", spk } printf " %s", $1 }
       END { if (NR > 0) printf "\n" }'
