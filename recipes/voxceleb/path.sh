# Environment of the VoxCeleb recipe: source it from recipes/voxceleb (run.sh does).
# Puts the repository's virtual environment first on PATH (when there is one) so that `memsv`,
# `python` and `torchrun` are the project's, and fixes the locale for sort/join (Kaldi convention).
MEMSV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -x "$MEMSV_ROOT/.venv/bin/memsv" ]; then
  export PATH="$MEMSV_ROOT/.venv/bin:$PATH"
fi
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
export PYTHONUNBUFFERED=1
if ! command -v memsv >/dev/null; then
  echo "path.sh: memsv not found; run 'make install' in $MEMSV_ROOT (or activate your environment)" >&2
  return 1 2>/dev/null || exit 1
fi
