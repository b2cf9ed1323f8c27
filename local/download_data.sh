#!/usr/bin/env bash
# Fetch the public augmentation corpora and say where VoxCeleb comes from.
#   local/download_data.sh [--download_dir DIR] [--fetch_aug true]
# MUSAN (OpenSLR 17) and RIRS_NOISES (OpenSLR 28) are public and downloaded with wget when
# --fetch_aug true. VoxCeleb1/2 need a (free) access request at https://www.robots.ox.ac.uk/~vgg/data/voxceleb/;
# put vox1_test_wav.zip, vox1_dev_wav.zip (or its parts vox1_dev_wav_parta{a..d}) and vox2_aac.zip (or
# vox2_dev_aac_parta{a..h}) into DIR by hand. Every archive present is then checked against
# local/archives.md5. Nothing is downloaded twice.
set -euo pipefail
download_dir=data/download_data
fetch_aug=true
. "$(dirname "$0")/../tools/parse_options.sh" || exit 1
local_dir=$(dirname "$0")
mkdir -p "$download_dir"

if $fetch_aug; then
  for archive in musan.tar.gz rirs_noises.zip; do
    [ -f "$download_dir/$archive" ] && continue
    url=$(awk -v a="$archive" '$2 == a { print $3 }' "$local_dir/archives.md5")
    echo "$0: downloading $url" >&2
    wget --no-check-certificate -c -O "$download_dir/$archive.part" "$url"
    mv "$download_dir/$archive.part" "$download_dir/$archive"
  done
fi

missing=""
for archive in vox1_test_wav.zip vox1_dev_wav.zip vox2_aac.zip; do
  part=${archive%.zip}; part=${part/vox2_aac/vox2_dev_aac}_parta
  [ -f "$download_dir/$archive" ] || compgen -G "$download_dir/$part*" >/dev/null || missing="$missing $archive"
done
if [ -n "$missing" ]; then
  cat >&2 <<MSG
$0: VoxCeleb archives not found in $download_dir:$missing
  Request access at https://www.robots.ox.ac.uk/~vgg/data/voxceleb/ (vox1.html, vox2.html), download the
  archives (dev sets come in parts: vox1_dev_wav_parta{a..d}, vox2_dev_aac_parta{a..h}) into
  $download_dir, then re-run this stage. Expected md5 sums: local/archives.md5.
MSG
fi
"$local_dir/check_md5.sh" "$download_dir"
[ -z "$missing" ]
