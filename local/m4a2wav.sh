#!/usr/bin/env bash
# Convert a VoxCeleb2-style m4a tree to 16 kHz mono 16-bit wav, in parallel (Kaldi m4a2wav style).
#   local/m4a2wav.sh [--nj 8] [--sample_rate 16000] <src-root> <dst-root>
# Mirrors <src-root>/<spk>/<video>/<utt>.m4a to <dst-root>/<spk>/<video>/<utt>.wav. Each file is written
# to a temporary name and renamed when ffmpeg succeeds, so an interrupted run leaves no truncated wav;
# re-running converts only what is missing. Then: memsv prepare-data --corpus voxceleb --root <dst-root>
set -euo pipefail
nj=8
sample_rate=16000
. "$(dirname "$0")/../tools/parse_options.sh" || exit 1
[ $# -eq 2 ] || { echo "usage: $0 [--nj N] [--sample_rate HZ] <src-root> <dst-root>" >&2; exit 1; }
src=$1
dst=$2
[ -d "$src" ] || { echo "$0: no such directory: $src" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "$0: ffmpeg not found (apt-get install ffmpeg, or make system-deps)" >&2; exit 1; }
mkdir -p "$dst"

convert_one() {  # $1: path relative to src, ending in .m4a
  local rel=$1 out
  out="$dst/${rel%.m4a}.wav"
  [ -s "$out" ] && return 0
  mkdir -p "$(dirname "$out")"
  if ffmpeg -nostdin -hide_banner -loglevel error -y -i "$src/$rel" -ac 1 -ar "$sample_rate" \
       -acodec pcm_s16le -f wav "$out.tmp"; then
    mv -f "$out.tmp" "$out"
  else
    rm -f "$out.tmp"
    echo "m4a2wav.sh: ffmpeg failed on $src/$rel" >&2
    return 1
  fi
}
export -f convert_one
export src dst sample_rate

total=$(cd "$src" && find -L . -name '*.m4a' | wc -l)
[ "$total" -gt 0 ] || { echo "$0: no .m4a files under $src" >&2; exit 1; }
echo "$0: converting $total m4a files from $src to $dst with $nj jobs" >&2
# NUL-separated so that any file name survives; xargs exits non-zero if any conversion failed.
if ! (cd "$src" && find -L . -name '*.m4a' -print0 | sed -z 's|^\./||' \
      | xargs -0 -n 1 -P "$nj" bash -c 'convert_one "$1"' _); then
  echo "$0: some files failed to convert (see above); re-run to retry only those" >&2
  exit 1
fi
echo "$0: done, $(cd "$dst" && find -L . -name '*.wav' | wc -l) wav files under $dst" >&2
