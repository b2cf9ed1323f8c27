#!/usr/bin/env bash
# Kaldi-style option parsing for recipe scripts: source it after declaring the variables with defaults.
#
#   stage=1
#   exp_dir=exp/resnet34
#   . tools/parse_options.sh || exit 1
#
# Every `--name value` or `--name=value` sets the shell variable `name`; dashes and underscores are the
# same (`--stop-stage 3` == `--stop_stage 3`). Only variables that the script declared can be set, so a
# typo is an error instead of a silently ignored option. A variable whose default is true/false accepts
# only true/false. Unlike Kaldi's version, `--config` is an ordinary variable (recipes use it for the
# training YAML; Kaldi would source the file as shell code). `--help`/`-h` prints
# $help_message (when the script defines one) and the variables with their current values.
# Parsing stops at the first argument that does not start with `--`; those remain in "$@".

__po_usage() {
  [ -n "${help_message:-}" ] && echo -e "$help_message" >&2
  echo "Options (current values):" >&2
  local v
  for v in $__po_declared; do echo "  --${v//_/-} ${!v}" >&2; done
}

# The variables the script declared before sourcing us (names only; used by --help).
__po_declared=$(set -o posix; set | sed -n 's/^\([a-z][a-z0-9_]*\)=.*/\1/p' | grep -v -e '^__po_' -e '^help_message$' | tr '\n' ' ')

while true; do
  [ -z "${1:-}" ] && break
  case "$1" in
    --help|-h)
      __po_usage; exit 0 ;;
    --*=*)
      __po_name=${1%%=*}; __po_value=${1#*=}; __po_shift=1 ;;&
    --*)
      if [ -z "${__po_shift:-}" ]; then
        __po_name=$1
        if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
        __po_value=$2; __po_shift=2
      fi
      __po_name=${__po_name#--}; __po_name=${__po_name//-/_}
      if ! [[ "$__po_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "$0: invalid option name --${__po_name}" >&2; exit 1
      fi
      # Only variables the script declared (set, possibly to "") may be overridden.
      if [ -z "${!__po_name+set}" ]; then
        echo "$0: invalid option --${__po_name//_/-} (no variable '$__po_name'; see --help)" >&2; exit 1
      fi
      __po_old=${!__po_name}
      if { [ "$__po_old" = true ] || [ "$__po_old" = false ]; } && \
         [ "$__po_value" != true ] && [ "$__po_value" != false ]; then
        echo "$0: option --${__po_name//_/-} takes true or false, got '$__po_value'" >&2; exit 1
      fi
      printf -v "$__po_name" '%s' "$__po_value"
      shift "$__po_shift"; unset __po_shift ;;
    *) break ;;
  esac
done
unset __po_name __po_value __po_old __po_shift
true
