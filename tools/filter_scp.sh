#!/usr/bin/env bash
# Keep the lines of <file> whose first field is listed (first field) in <id-list> (Kaldi filter_scp.pl).
#   tools/filter_scp.sh [--exclude] <id-list> <file>  > out
set -euo pipefail
exclude=0
if [ "${1:-}" = --exclude ]; then exclude=1; shift; fi
[ $# -eq 2 ] || { echo "usage: $0 [--exclude] <id-list> <file>" >&2; exit 1; }
awk -v ex=$exclude 'NR == FNR { keep[$1]; next } (($1 in keep) != ex)' "$1" "$2"
