#!/usr/bin/env bash
# VoxCeleb2 dev (5,994 speakers, 1,092,009 utterances) -> <data-dir>/vox2_dev, the training set.
#   local/prepare_vox2.sh [--download_dir D] [--raw_dir R] [--to_wav false] [--nj 8] <data-dir>
# Extracts vox2_aac.zip (md5-checked) into RAW_DIR/voxceleb2_m4a unless it exists. The audio is AAC
# (.m4a): by default wav.scp decodes it on the fly through ffmpeg pipes (no extra disk); with
# --to_wav true local/m4a2wav.sh converts the tree to 16 kHz wav once (about 300 GB, faster to re-read).
set -euo pipefail
download_dir=data/download_data
raw_dir=data/raw_data
to_wav=false
nj=8
. "$(dirname "$0")/../tools/parse_options.sh" || exit 1
[ $# -eq 1 ] || { echo "usage: $0 [--download_dir D] [--raw_dir R] [--to_wav true|false] [--nj N] <data-dir>" >&2; exit 1; }
data=$1
local_dir=$(dirname "$0")
vox2=$raw_dir/voxceleb2_m4a
if [ ! -d "$vox2/dev/aac" ]; then
  "$local_dir/check_md5.sh" --require vox2_aac.zip "$download_dir"
  echo "$0: extracting $download_dir/vox2_aac.zip into $vox2" >&2
  mkdir -p "$vox2"
  unzip -q -o "$download_dir/vox2_aac.zip" -d "$vox2"
fi
root=$vox2/dev/aac
if $to_wav; then
  [ -x "$local_dir/m4a2wav.sh" ] || { echo "$0: $local_dir/m4a2wav.sh not found" >&2; exit 1; }
  "$local_dir/m4a2wav.sh" --nj "$nj" "$root" "$raw_dir/voxceleb2_wav"
  root=$raw_dir/voxceleb2_wav
fi
memsv prepare-data --corpus voxceleb --root "$root" --out "$data/vox2_dev"
