#!/usr/bin/env bash
# Mini-corpus accuracy of vanilla vs Type I (rev_) vs Type II (fullrev_) models, 32-bit vs 8-bit Adam,
# at the same training budget (the same config, epochs, batch and seed; only model / optimizer change).
#   benchmarks/mini_recipe_compare.sh [--config conf/mini_fast.yaml] [--arch resnet18] [--train_opts "..."]
# Needs stages 1-2 of `recipes/voxceleb/run.sh --data mini` (data/mini, fbank/mini). Runs stages 3-5 per
# variant into exp/compare/<variant> and prints EER / minDCF with ratios to the vanilla 32-bit run.
set -euo pipefail
cd "$(dirname "$0")/../recipes/voxceleb"
config=conf/mini_fast.yaml
arch=resnet18
train_opts=
variants="vanilla:adam vanilla:adam8bit rev:adam rev:adam8bit fullrev:adam fullrev:adam8bit"
. tools/parse_options.sh || exit 1
for v in $variants; do
  kind=${v%%:*}; opt=${v#*:}
  case $kind in vanilla) model=$arch ;; *) model=${kind}_$arch ;; esac
  exp=exp/compare/${model}_$opt
  if [ ! -f "$exp/scores/results.json" ]; then
    rm -rf "$exp"
    ./run.sh --data mini --stage 3 --stop_stage 5 --config "$config" --exp_dir "$exp" \
      --train_opts "--model $model --optimizer $opt $train_opts" > "exp/compare/${model}_$opt.log" 2>&1 \
      || { echo "failed: $model $opt (see exp/compare/${model}_$opt.log)" >&2; exit 1; }
  fi
done
python - "$arch" $variants <<'PY'
import json, sys
arch, variants = sys.argv[1], sys.argv[2:]
rows = []
for v in variants:
    kind, opt = v.split(":")
    model = arch if kind == "vanilla" else f"{kind}_{arch}"
    (r,) = json.load(open(f"exp/compare/{model}_{opt}/scores/results.json"))["results"]
    rows.append((model, opt, r["eer"], r["min_dcf_0.01"]))
base = rows[0][2]
print(f"| model | optimizer | EER (%) | minDCF 0.01 | EER / {rows[0][0]}+{rows[0][1]} |")
print("|---|---|---|---|---|")
for model, opt, eer, dcf in rows:
    print(f"| {model} | {opt} | {eer:.2f} | {dcf:.4f} | {eer / base:.2f}x |")
PY
