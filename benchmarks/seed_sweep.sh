#!/usr/bin/env bash
# The demo recipe's EER over seeds on both synthetic corpora, one table: what docs/results.md reports for
# every demo-config candidate (a single run says little: the seed moves an EER by up to 5 points).
#   benchmarks/seed_sweep.sh [--corpora "mini hnm"] [--seeds "42 43 44"] [--train_opts "..."] [--tag demo]
#                            [--lda_dim max|none|N]
# Needs stages 1-2 of `recipes/voxceleb/run.sh --data C` for each corpus C. Runs stages 3-6 per corpus
# and seed into exp/sweep/<tag>_<C>_s<seed> (a finished one is kept, so an interrupted sweep continues
# where it stopped; one finished with other --train_opts is an error, not silently reused; stages 5-6
# are always rerun, seconds each, so the table shows the --lda_dim back-end asked for), then prints
# cosine / AS-norm EER per seed, the mean, the final training accuracy and the stage 3-6 wall time,
# beside the linear baselines each corpus must beat (benchmarks/linear_baseline.py's mean+std fbank +
# LDA (svd / shrinkage) + cosine on the same data dirs, computed once into exp/sweep/baseline_<C>.json;
# mini 7.31 / 10.09%, hnm 7.68 / 7.47% at the default corpus seed 777; remove exp/sweep after re-making
# the corpora).
set -euo pipefail
cd "$(dirname "$0")/../recipes/voxceleb"
. ./path.sh
corpora="mini hnm"
seeds="42 43 44"
train_opts=
tag=demo
lda_dim=max                # the scoring back-end (run.sh --lda_dim; max is its default for mini / hnm)
. tools/parse_options.sh || exit 1
mkdir -p exp/sweep
for c in $corpora; do
  for s in $seeds; do
    exp=exp/sweep/${tag}_${c}_s$s
    if [ -f "$exp/wall_seconds" ]; then  # finished: reuse it, but only for the same options
      if [ "$(cat "$exp/sweep_opts")" = "$train_opts" ]; then
        ./run.sh --data "$c" --stage 5 --stop_stage 6 --exp_dir "$exp" --lda_dim "$lda_dim" > "$exp.score.log" 2>&1 \
          || { echo "failed: scoring $c seed $s (see $exp.score.log)" >&2; exit 1; }
        continue
      fi
      echo "$0: $exp was run with --train_opts '$(cat "$exp/sweep_opts")'; use another --tag or remove it" >&2
      exit 1
    fi
    rm -rf "$exp"
    start=$SECONDS
    ./run.sh --data "$c" --stage 3 --stop_stage 6 --exp_dir "$exp" --lda_dim "$lda_dim" \
      --train_opts "--set seed=$s $train_opts" > "$exp.log" 2>&1 \
      || { echo "failed: $c seed $s (see $exp.log)" >&2; exit 1; }
    printf '%s' "$train_opts" > "$exp/sweep_opts"
    echo $((SECONDS - start)) > "$exp/wall_seconds"  # last: marks the run finished
  done
  base=exp/sweep/baseline_$c.json
  [ -f "$base" ] || python - "$c" "$base" <<'PY'
import json, sys
from pathlib import Path

sys.path.insert(0, "../../benchmarks")
from linear_baseline import run_baselines  # noqa: E402

name, out = sys.argv[1], Path(sys.argv[2])
result = run_baselines(Path(f"data/{name}/{name}_train"), Path(f"data/{name}/{name}_test"), nj=2)
tmp = out.with_suffix(".tmp")
svd, shrunk = (result[f"mean+std LDA ({x}) cosine"].eer_percent for x in ("svd", "shrinkage"))
tmp.write_text(json.dumps({"eer": svd, "eer_shrinkage": shrunk}))
tmp.replace(out)
PY
done
python - "$tag" "$corpora" "$seeds" "$lda_dim" <<'PY'
import json, statistics, sys
from pathlib import Path

tag, corpora, seeds, lda_dim = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]


def eer(exp: Path, scores: str) -> float:
    return json.loads((exp / scores / "results.json").read_text())["results"][0]["eer"]


def last_acc(exp: Path) -> float:
    recs = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["type"] == "epoch"][-1]["acc"]


head = " | ".join(f"seed {s}" for s in seeds)
print(f"| corpus | {head} | mean | LDA baselines (svd / shrinkage) | training accuracy | stage 3-6 wall s |")
print("|---|" + "---|" * (len(seeds) + 4))
for c in corpora:
    exps = [Path(f"exp/sweep/{tag}_{c}_s{s}") for s in seeds]
    cos, asn = [eer(e, "scores") for e in exps], [eer(e, "scores_asnorm") for e in exps]
    cells = [f"{a:.2f} / {b:.2f}" for a, b in zip(cos, asn)]
    mean = f"{statistics.mean(cos):.2f} / {statistics.mean(asn):.2f}"
    acc = ", ".join(f"{100 * last_acc(e):.1f}%" for e in exps)
    wall = ", ".join((e / "wall_seconds").read_text().strip() for e in exps)
    base = json.loads(Path(f"exp/sweep/baseline_{c}.json").read_text())
    bases = f"{base['eer']:.2f} / {base['eer_shrinkage']:.2f}" if "eer_shrinkage" in base else f"{base['eer']:.2f}"
    print(f"| {c} | {' | '.join(cells)} | **{mean}** | {bases} | {acc} | {wall} |")
backend = "plain" if lda_dim == "none" else f"after the LDA back-end (--lda_dim {lda_dim})"
print(f"EER % cosine {backend}, training mean subtracted / AS-norm (top 300 of the training-speaker means)")
PY
