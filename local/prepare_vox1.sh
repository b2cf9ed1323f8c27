#!/usr/bin/env bash
# VoxCeleb1 (dev + test, 1,251 speakers) -> <data-dir>/vox1 with the cleaned O/E/H trial lists:
#   trials/vox1_O_cleaned.kaldi (37,611), vox1_E_cleaned.kaldi (579,818), vox1_H_cleaned.kaldi (550,894).
#   local/prepare_vox1.sh [--download_dir D] [--raw_dir R] <data-dir>
# Extracts vox1_dev_wav.zip and vox1_test_wav.zip (md5-checked) into RAW_DIR/voxceleb1 unless it exists.
# The trial lists (veri_test2.txt, list_test_all2.txt, list_test_hard2.txt) are taken from DOWNLOAD_DIR
# or fetched from the VoxCeleb meta page.
set -euo pipefail
download_dir=data/download_data
raw_dir=data/raw_data
meta_url=https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta
. "$(dirname "$0")/../tools/parse_options.sh" || exit 1
[ $# -eq 1 ] || { echo "usage: $0 [--download_dir D] [--raw_dir R] <data-dir>" >&2; exit 1; }
data=$1
local_dir=$(dirname "$0")
vox1=$raw_dir/voxceleb1
if [ ! -d "$vox1/dev/wav" ] || [ ! -d "$vox1/test/wav" ]; then
  "$local_dir/check_md5.sh" --require "vox1_dev_wav.zip vox1_test_wav.zip" "$download_dir"
  for part in dev test; do
    echo "$0: extracting $download_dir/vox1_${part}_wav.zip into $vox1/$part" >&2
    mkdir -p "$vox1/$part"
    unzip -q -o "$download_dir/vox1_${part}_wav.zip" -d "$vox1/$part"
  done
fi
mkdir -p "$vox1/trials"
# <VoxCeleb meta file> <name in data/vox1/trials>
for pair in veri_test2:vox1_O_cleaned list_test_all2:vox1_E_cleaned list_test_hard2:vox1_H_cleaned; do
  src=${pair%%:*}.txt; name=${pair#*:}
  if [ ! -f "$download_dir/$src" ]; then
    echo "$0: fetching $meta_url/$src" >&2
    wget --no-check-certificate -q -O "$download_dir/$src.part" "$meta_url/$src" && \
      mv "$download_dir/$src.part" "$download_dir/$src" || \
      { rm -f "$download_dir/$src.part"; echo "$0: cannot fetch $src: put it into $download_dir" >&2; exit 1; }
  fi
  cp "$download_dir/$src" "$vox1/trials/$name.txt"
done
memsv prepare-data --corpus voxceleb --root "$vox1" --out "$data/vox1" \
  --trials "$vox1/trials/vox1_O_cleaned.txt" --trials "$vox1/trials/vox1_E_cleaned.txt" \
  --trials "$vox1/trials/vox1_H_cleaned.txt"
