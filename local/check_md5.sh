#!/usr/bin/env bash
# Check the md5 sums of the downloaded archives against local/archives.md5.
#   local/check_md5.sh [--require "vox1_test_wav.zip ..."] <download-dir>
# Archives that are present are checked (a mismatch is an error); archives listed in --require must be
# present. Parts (vox2_dev_aac_partaa ...) are concatenated into the full archive first, as WeSpeaker does.
set -euo pipefail
require=""
. "$(dirname "$0")/../tools/parse_options.sh" || exit 1
[ $# -eq 1 ] || { echo "usage: $0 [--require 'a.zip b.zip'] <download-dir>" >&2; exit 1; }
dir=$1
list="$(dirname "$0")/archives.md5"
[ -d "$dir" ] || { echo "$0: $dir: no such directory" >&2; exit 1; }

# Concatenate split archives when only their parts were downloaded.
join_parts() {  # <archive> <part-prefix>
  if [ ! -f "$dir/$1" ] && compgen -G "$dir/$2*" >/dev/null; then
    echo "$0: joining $dir/$2* into $dir/$1" >&2
    cat "$dir/$2"* > "$dir/$1.tmp" && mv "$dir/$1.tmp" "$dir/$1"
  fi
}
join_parts vox1_dev_wav.zip vox1_dev_wav_parta
join_parts vox2_aac.zip vox2_dev_aac_parta

status=0
while read -r md5 archive url; do
  case "$md5" in ''|'#'*) continue ;; esac
  if [ ! -f "$dir/$archive" ]; then
    if [[ " $require " == *" $archive "* ]]; then
      echo "$0: missing $dir/$archive (get it from $url)" >&2; status=1
    fi
    continue
  fi
  got=$(md5sum "$dir/$archive" | cut -d' ' -f1)
  if [ "$got" != "$md5" ]; then
    echo "$0: wrong md5 for $dir/$archive: $got, expected $md5 (re-download from $url)" >&2; status=1
  else
    echo "$0: $archive OK" >&2
  fi
done < "$list"
exit $status
