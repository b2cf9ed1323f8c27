#!/usr/bin/env bash
# memsv VoxCeleb recipe (WeSpeaker examples/voxceleb/v2 style): train on VoxCeleb2-dev, test on the
# cleaned VoxCeleb1-O/E/H trial lists, with reversible ResNets / DF-ResNets and 8-bit optimizers
# (Liu & Qian 2024, "Memory-Efficient Training for Deep Speaker Embedding Learning in Speaker Verification").
#
#   ./run.sh                                   # the whole pipeline on real VoxCeleb (stages 1-7)
#   ./run.sh --data mini                       # the same stages on the synthetic mini corpus (CPU, minutes)
#   ./run.sh --data hnm                        # ... on the second synthetic corpus (made differently)
#   ./run.sh --stage 3 --stop_stage 3 --config conf/rev_resnet34_sgd8bit.yaml --exp_dir exp/rev_resnet34_sgd8bit
#
# Every variable below can be set on the command line (--name value; dashes or underscores), see
# ./run.sh --help. Each stage reads only the files of the stages before it, so any single stage can be
# re-run with --stage N --stop_stage N.
#
# Stages: 1 prepare data (+ augmented copies)    2 fbank          3 train (torchrun over the GPUs)
#         4 average checkpoints, embeddings      5 cosine scoring 6 AS-norm scoring
#         7 memory profile of the trained setup  8 large-margin fine-tuning (optional: --stop_stage 8)

set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh || exit 1

stage=1
stop_stage=7
data=voxceleb              # voxceleb | mini | hnm (synthetic corpora: `make demo` runs mini)

# Locations. Empty means "the default of --data" (filled in below).
data_dir=                  # Kaldi data directories
fbank_dir=                 # features
shard_dir=                 # tar shards of the training set (data_type shard)
download_dir=              # archives (VoxCeleb zips, musan.tar.gz, rirs_noises.zip, trial lists)
raw_dir=                   # extracted corpora
config=                    # training config
exp_dir=                   # experiment directory

# Sets
train_set=                 # training data dir name (vox2_dev | mini_train | hnm_train)
eval_set=                  # evaluation data dir name, holding trials/ (vox1 | mini_test | hnm_test)
trials=                    # trial lists in <data_dir>/<eval_set>/trials/

# Training data (WeSpeaker's names): shard (tar shards of raw audio read sequentially), raw (wav.scp) or
# feat (fbank arks). shard and raw augment on the fly in the DataLoader workers as the config says
# (data.speed_perturb, data.aug_prob: WeSpeaker's 0.9/1.0/1.1 and 0.6), with the MUSAN / RIR lists that
# stage 1 prepares; feat trains on features extracted once, with the offline copies below if asked.
data_type=shard

# Offline augmentation (stage 1, data_type feat only), Kaldi style: copies written next to the clean
# set, then combined with it; an epoch still draws one sample per original utterance (data.aug_prob)
speed_perturb=false        # add sp0.9- / sp1.1- copies as new speakers (sox pipes in wav.scp)
aug=false                  # add augmented copies of the training set
aug_types="reverb noise music babble"
aug_num_utts=              # utterances per augmentation type (empty: all; Kaldi v2 keeps 1M of 4M)
mini_opts=                 # `memsv prepare-data --corpus mini|hnm` options (corpus size, seed)
vox2_to_wav=false          # convert VoxCeleb2 m4a to wav once (local/m4a2wav.sh) instead of ffmpeg pipes

# Compute
nj=                        # parallel jobs for data preparation / fbank / augmentation
gpus=                      # e.g. "[0,1,2,3,4,5,6,7]" (WeSpeaker style); empty: no GPU, one process
num_nodes=1                # multi-node: the same command on every node, torchrun rendezvous
node_rank=0                # this node (only for --rdzv_backend static)
master_addr=localhost      # rendezvous host (node 0)
master_port=29400
rdzv_backend=c10d          # c10d (elastic, node ranks assigned) | static (uses node_rank)
rdzv_id=memsv_voxceleb
max_restarts=0             # torchrun restarts a failed worker group this often; it resumes by itself

# Training / scoring
train_opts=                # extra `memsv train` arguments, e.g. "--set train.epochs=10 --precision bf16"
resume=false               # continue an interrupted stage 3 from its newest checkpoint
gpu_memory=                # card size, e.g. 11GiB: stages 3 and 8 train with the cheapest exact memory
                           # plan that fits (memsv train --gpu-memory; the plan table is in train.log)
num_avg=                   # checkpoints averaged into avg_model.pt (default: train.num_avg of the config)
score_norm=asnorm          # stage 6 normalisation (asnorm | snorm)
top_n=300                  # AS-norm cohort size
lda_dim=                   # LDA back-end before scoring (stages 5, 6, 8), fitted on the training speakers'
                           # embeddings (memsv compute-lda): none (plain cosine, WeSpeaker's), max (speakers
                           # - 1) or a number. Default: none for voxceleb, max for mini / hnm, whose 40
                           # training speakers leave channel and text directions in the embeddings
                           # (docs/results.md)
profile_opts=              # extra `memsv profile-memory` arguments, e.g. "--gpu-memory 11GiB"

# Large-margin fine-tuning (stage 8; WeSpeaker's *_lm configs)
lm_exp_dir=                # default: <exp_dir>-LM
lm_chunk_frames=600        # WeSpeaker: 6 s chunks ...
lm_margin=0.5              # ... a fixed large margin ...
lm_epochs=5                # ... for 5 epochs at LR 1e-4 -> 2.5e-5 (1 warm-up epoch)
lm_batch_size=64           # per GPU (WeSpeaker's LM configs)
lm_opts=                   # extra `memsv train` arguments for stage 8

help_message="usage: ./run.sh [--data voxceleb|mini|hnm] [--stage N] [--stop_stage N] [--config conf/X.yaml] [--exp_dir exp/X] ..."
. tools/parse_options.sh || exit 1
[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (options are --name value)" >&2; exit 1; }

case $data in
  voxceleb)
    : "${data_dir:=data}" "${fbank_dir:=fbank}" "${shard_dir:=shards}" "${download_dir:=data/download_data}"
    : "${raw_dir:=data/raw_data}"
    : "${config:=conf/resnet34.yaml}" "${train_set:=vox2_dev}" "${eval_set:=vox1}" "${lda_dim:=none}"
    : "${trials:=vox1_O_cleaned.kaldi vox1_E_cleaned.kaldi vox1_H_cleaned.kaldi}" "${nj:=16}"
    ;;
  mini|hnm)
    : "${data_dir:=data/$data}" "${fbank_dir:=fbank/$data}" "${shard_dir:=shards/$data}"
    : "${download_dir:=data/download_data}"
    : "${raw_dir:=data/$data}" "${config:=conf/mini_fast.yaml}" "${train_set:=${data}_train}"
    : "${eval_set:=${data}_test}" "${trials:=$data.kaldi}" "${nj:=2}" "${lda_dim:=max}"
    : "${exp_dir:=exp/$(basename "$config" .yaml | sed "s/^mini/$data/")}"  # exp/mini_fast, exp/hnm_fast
    ;;
  *) echo "$0: --data must be voxceleb, mini or hnm, got '$data'" >&2; exit 1 ;;
esac
case $lda_dim in
  none|max|[1-9]|[1-9][0-9]|[1-9][0-9][0-9]|[1-9][0-9][0-9][0-9]) ;;
  *) echo "$0: --lda_dim must be none, max or a positive number, got '$lda_dim'" >&2; exit 1 ;;
esac
: "${exp_dir:=exp/$(basename "$config" .yaml)}"
: "${lm_exp_dir:=${exp_dir}-LM}"
[ -f "$config" ] || { echo "$0: config $config not found (see conf/)" >&2; exit 1; }

case $data_type in
  shard|raw) online=true ;;
  feat) online=false ;;
  *) echo "$0: --data_type must be shard, raw or feat, got '$data_type'" >&2; exit 1 ;;
esac
if $online && { $speed_perturb || $aug; }; then
  echo "$0: --speed_perturb/--aug make offline copies for --data_type feat; $data_type augments on the fly" >&2
  exit 1
fi
# The training set after stage 1's optional (offline) speed perturbation and augmentation.
train_data=$train_set
$speed_perturb && train_data=${train_data}_sp
$aug && train_data=${train_data}_aug
# Augmentation sources (MUSAN / RIR lists) are prepared for online augmentation and offline copies.
aug_sources=false
{ $online || $aug; } && aug_sources=true

gpus=${gpus//[\[\] ]/}
num_gpus=0
[ -n "$gpus" ] && num_gpus=$(echo "$gpus" | awk -F, '{ print NF }')

log() { echo -e "$(date -u '+%Y-%m-%d %H:%M:%S') [run.sh stage $1] ${*:2}" >&2; }
t_start=$SECONDS

# --------------------------------------------------------------------------------------------------
if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log 1 "prepare data ($data) in $data_dir"
  if [ $data = voxceleb ]; then
    local/download_data.sh --download_dir "$download_dir" --fetch_aug "$aug_sources"
    local/prepare_vox2.sh --download_dir "$download_dir" --raw_dir "$raw_dir" --to_wav "$vox2_to_wav" \
      --nj "$nj" "$data_dir"
    local/prepare_vox1.sh --download_dir "$download_dir" --raw_dir "$raw_dir" "$data_dir"
    if $aug_sources; then
      local/prepare_musan.sh --download_dir "$download_dir" --raw_dir "$raw_dir" "$data_dir"
      local/prepare_rirs.sh --download_dir "$download_dir" --raw_dir "$raw_dir" "$data_dir"
    fi
    babble_source=$data_dir/musan_speech
  else
    # shellcheck disable=SC2086
    memsv prepare-data --corpus "$data" --out "$data_dir" --nj "$nj" $mini_opts
    # Stand-ins for MUSAN / RIRS_NOISES; babble uses the training speech itself (never the test set).
    if $aug_sources; then
      memsv make-aug-sources "$data_dir/aug_sources"
      for kind in noise music; do ln -sfn "aug_sources/$kind" "$data_dir/musan_$kind"; done
      ln -sfn aug_sources/rirs "$data_dir/rirs"
      ln -sfn "$train_set" "$data_dir/musan_speech"
    fi
    babble_source=$data_dir/$train_set
  fi
  for x in musan_noise musan_music musan_speech rirs; do
    $aug_sources && { [ -f "$data_dir/$x/wav.scp" ] || { echo "$0: stage 1 made no $data_dir/$x" >&2; exit 1; }; }
  done

  src=$train_set
  if $speed_perturb; then
    log 1 "speed perturbation 0.9/1.0/1.1 -> $data_dir/${src}_sp"
    memsv speed-perturb "$data_dir/$src" "$data_dir/${src}_sp" --factors 0.9,1.0,1.1
    src=${src}_sp
  fi
  if $aug; then
    parts=()
    num_opt=()
    [ -n "$aug_num_utts" ] && num_opt=(--num-utts "$aug_num_utts")
    for type in $aug_types; do
      case $type in
        reverb) source=$data_dir/rirs ;;
        noise|music) source=$data_dir/musan_$type ;;
        babble) source=$babble_source ;;
        *) echo "$0: unknown augmentation type '$type'" >&2; exit 1 ;;
      esac
      log 1 "augmented copy: $type -> $data_dir/${src}_$type"
      memsv augment-data "$data_dir/$src" "$data_dir/${src}_$type" --type "$type" --source "$source" \
        --nj "$nj" "${num_opt[@]}"
      parts+=("$data_dir/${src}_$type")
    done
    tools/combine_data.sh "$data_dir/${src}_aug" "$data_dir/$src" "${parts[@]}"
  fi
fi

# --------------------------------------------------------------------------------------------------
if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  # Features of the evaluation set and of the clean training set (its embeddings give the mean and the
  # AS-norm cohort); of the (augmented) training set when training on features.
  feat_sets="$train_set $eval_set"
  [ $data_type = feat ] && feat_sets="$train_data $feat_sets"
  for x in $(echo "$feat_sets" | tr ' ' '\n' | awk '!seen[$0]++'); do
    log 2 "fbank: $data_dir/$x -> $fbank_dir/$x"
    # the bins and frame lengths of the config's data.fbank_args: what the model sees in training
    memsv extract-fbank "$data_dir/$x" "$fbank_dir/$x" --nj "$nj" --train-config "$config"
  done
  if [ $data_type = shard ]; then
    log 2 "shards: $data_dir/$train_set -> $shard_dir/$train_set"
    memsv make-shards "$data_dir/$train_set" "$shard_dir/$train_set" --nj "$nj"
  fi
fi

# memsv train (stages 3 and 8): through torchrun over the GPUs (or with --max_restarts > 0), else
# directly. A worker group that torchrun restarts resumes from the newest checkpoint by itself. A stop
# signal (preemption, Ctrl-C) ends memsv train with a checkpoint but no finished model: the recipe stops
# there instead of averaging a half-trained one.
run_train() {  # run_train <stage> <rdzv_id> <exp_dir> <memsv train arguments...>
  local stage_now=$1 id=$2 exp=$3 nproc=1 device=()
  shift 3
  if [ "$num_gpus" -ge 1 ]; then
    export CUDA_VISIBLE_DEVICES=$gpus
    nproc=$num_gpus device=(--device cuda)
  fi
  if [ "$num_gpus" -ge 1 ] || [ "$max_restarts" -gt 0 ]; then
    # torchrun's agent must not share its rendezvous store with the workers' process group, or a
    # restarted group can read the dead group's addresses and hang (pytorch#135712)
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    local launcher=(torchrun --nnodes="$num_nodes" --nproc_per_node="$nproc" --max_restarts="$max_restarts"
                    --rdzv_backend="$rdzv_backend" --rdzv_endpoint="$master_addr:$master_port" --rdzv_id="$id")
    [ "$rdzv_backend" = static ] && launcher+=(--node_rank="$node_rank" --master_addr="$master_addr"
                                               --master_port="$master_port")
    "${launcher[@]}" -m memsv_cli "$@" ${device[@]+"${device[@]}"}
  else
    memsv "$@"
  fi
  if [ ! -e "$exp/models/final_model.pt" ]; then
    echo "$0: training in $exp stopped before its last epoch; continue it with --stage ${stage_now} --resume true" >&2
    exit 1
  fi
}

# The training dir and the `memsv train` options of the data type (one per line): which reader, and
# the augmentation sources (absolute paths: the config.yaml of the experiment keeps them).
train_dir() {
  case $data_type in
    shard) echo "$shard_dir/$train_set" ;;
    raw) echo "$data_dir/$train_set" ;;
    feat) echo "$fbank_dir/$train_data" ;;
  esac
}
data_args() {
  printf -- '--data\n%s\n--set\ndata.type=%s\n' "$(train_dir)" "$data_type"
  if $online; then  # stage 1's rirs, musan_noise, musan_music, musan_speech
    printf -- '--set\ndata.aug_root=%s\n' "$(cd "$data_dir" && pwd)"
  else
    printf -- '--set\ndata.speed_perturb=false\n'  # features are speed-perturbed offline (sp copies)
  fi
}

# --------------------------------------------------------------------------------------------------
if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log 3 "train $config on $(train_dir) ($data_type) -> $exp_dir ($num_gpus GPU(s) x $num_nodes node(s))"
  mapfile -t dargs < <(data_args)
  args=(train --config "$config" --exp-dir "$exp_dir" "${dargs[@]}")
  $resume && args+=(--resume)
  [ -n "$gpu_memory" ] && args+=(--gpu-memory "$gpu_memory")
  [ -n "$num_avg" ] && args+=(--set "train.num_avg=$num_avg")
  # shellcheck disable=SC2206  # train_opts is a word list on purpose
  args+=($train_opts)
  run_train 3 "$rdzv_id" "$exp_dir" "${args[@]}"
fi

# --------------------------------------------------------------------------------------------------
if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  models=$exp_dir/models
  if [ -z "$num_avg" ] && [ "$models/avg_model.pt" -nt "$models/final_model.pt" ]; then
    # memsv train ends by averaging its last train.num_avg epochs; the same average again is a wasted start
    log 4 "$models/avg_model.pt: memsv train's average of its last train.num_avg epochs"
  else
    num_opt=()  # default: the experiment's train.num_avg
    [ -n "$num_avg" ] && num_opt=(--num "$num_avg")
    log 4 "average the last ${num_avg:-train.num_avg} checkpoints -> $models/avg_model.pt"
    memsv average-model --exp-dir "$exp_dir" ${num_opt[@]+"${num_opt[@]}"}
  fi
  for x in $eval_set $train_set; do
    spk_mean=()
    [ "$x" = "$train_set" ] && spk_mean=(--spk-mean)  # speaker means: the AS-norm cohort
    log 4 "embeddings: $fbank_dir/$x -> $exp_dir/embeddings/$x"
    memsv extract-embeddings --checkpoint "$exp_dir/models/avg_model.pt" --data "$fbank_dir/$x" \
      --out "$exp_dir/embeddings/$x" "${spk_mean[@]}"
  done
fi

trial_args() { local t; for t in $trials; do printf -- '--trials\n%s\n' "$data_dir/$eval_set/trials/$t"; done; }

# The scoring back-end (--lda_dim) of experiment $1. fit_backend fits the LDA on $1's training-set
# embeddings (Kaldi's ivector-compute-lda) into $1/lda/lda.mat, in the main shell so that a failure stops
# the recipe; backend_args prints the matching `memsv score` arguments.
fit_backend() {
  [ "$lda_dim" = none ] && return 0
  local dim_opt=()
  [ "$lda_dim" = max ] || dim_opt=(--dim "$lda_dim")
  memsv compute-lda "$1/embeddings/$train_set/xvector.scp" "$fbank_dir/$train_set/utt2spk" "$1/lda/lda.mat" \
    ${dim_opt[@]+"${dim_opt[@]}"}
}
backend_args() { [ "$lda_dim" = none ] || printf -- '--transform\n%s\n' "$1/lda/lda.mat"; }
backend_name() { if [ "$lda_dim" = none ]; then echo "plain cosine"; else echo "LDA ($lda_dim dims)"; fi; }

# --------------------------------------------------------------------------------------------------
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log 5 "cosine scoring, back-end $(backend_name), $train_set mean subtracted -> $exp_dir/scores"
  fit_backend "$exp_dir"
  mapfile -t targs < <(trial_args)
  mapfile -t bargs < <(backend_args "$exp_dir")
  # the table on stdout; scores, thresholds.json and results.json (the --json object) in --out-dir
  memsv score "${targs[@]}" ${bargs[@]+"${bargs[@]}"} --embeddings "$exp_dir/embeddings/$eval_set/xvector.scp" \
    --mean-from "$exp_dir/embeddings/$train_set/xvector.scp" --out-dir "$exp_dir/scores" --det-plot
fi

# --------------------------------------------------------------------------------------------------
if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log 6 "$score_norm scoring (top $top_n of the $train_set speaker cohort), back-end $(backend_name) -> $exp_dir/scores_$score_norm"
  fit_backend "$exp_dir"
  mapfile -t targs < <(trial_args)
  mapfile -t bargs < <(backend_args "$exp_dir")
  norm_args=(--embeddings "$exp_dir/embeddings/$eval_set/xvector.scp"
             --mean-from "$exp_dir/embeddings/$train_set/xvector.scp" --norm "$score_norm"
             --cohort "$exp_dir/embeddings/$train_set/spk_xvector.scp" --top-n "$top_n")
  memsv score "${targs[@]}" ${bargs[@]+"${bargs[@]}"} "${norm_args[@]}" --out-dir "$exp_dir/scores_$score_norm" \
    --det-plot
fi

# --------------------------------------------------------------------------------------------------
if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  # Exactly the setup that was trained: model and width, optimizer, precision, chunk, per-process
  # micro-batch and accumulation, recompute chunks / checkpointing (from exp/config.yaml, after the
  # memory plan of --gpu_memory) and the head's classes (from its weights).
  # shellcheck disable=SC2206
  popts=(--exp "$exp_dir" $profile_opts)
  log 7 "memory profile: ${popts[*]} -> $exp_dir/memory.json"
  memsv profile-memory "${popts[@]}" --out "$exp_dir/memory.json"
fi

# --------------------------------------------------------------------------------------------------
if [ $stage -le 8 ] && [ $stop_stage -ge 8 ]; then
  log 8 "large-margin fine-tuning of $exp_dir/models/avg_model.pt -> $lm_exp_dir"
  # WeSpeaker's *_lm configs: batch 64, 6-s chunks, a fixed margin 0.5, LR 1e-4 -> 2.5e-5, no speed
  # perturbation (the head is sliced back to the original speakers when it had 3 x as many classes)
  lm_sets=(data.chunk_frames="$lm_chunk_frames" margin_scheduler.initial_margin="$lm_margin"
           margin_scheduler.final_margin="$lm_margin" margin_scheduler.increase_start_epoch=0
           margin_scheduler.fix_start_epoch=0 scheduler.initial_lr=1.0e-4 scheduler.final_lr=2.5e-5
           scheduler.warm_up_epochs=1 scheduler.warm_from_zero=false train.epochs="$lm_epochs"
           train.num_avg=1 train.init_model="$exp_dir/models/avg_model.pt" train.batch_size="$lm_batch_size"
           data.speed_perturb=false memory_plan=)  # stage 3's plan record does not describe stage 8
  mapfile -t dargs < <(data_args)
  lm_args=(train --config "$exp_dir/config.yaml" --exp-dir "$lm_exp_dir" "${dargs[@]}")
  for kv in "${lm_sets[@]}"; do lm_args+=(--set "$kv"); done
  $resume && lm_args+=(--resume)
  [ -n "$gpu_memory" ] && lm_args+=(--gpu-memory "$gpu_memory")
  # shellcheck disable=SC2206
  lm_args+=($lm_opts)
  run_train 8 "${rdzv_id}_lm" "$lm_exp_dir" "${lm_args[@]}"
  for x in $eval_set $train_set; do
    spk_mean=()
    [ "$x" = "$train_set" ] && spk_mean=(--spk-mean)
    memsv extract-embeddings --checkpoint "$lm_exp_dir/models/avg_model.pt" --data "$fbank_dir/$x" \
      --out "$lm_exp_dir/embeddings/$x" "${spk_mean[@]}"
  done
  fit_backend "$lm_exp_dir"
  mapfile -t targs < <(trial_args)
  mapfile -t bargs < <(backend_args "$lm_exp_dir")
  memsv score "${targs[@]}" ${bargs[@]+"${bargs[@]}"} --embeddings "$lm_exp_dir/embeddings/$eval_set/xvector.scp" \
    --mean-from "$lm_exp_dir/embeddings/$train_set/xvector.scp" --norm "$score_norm" \
    --cohort "$lm_exp_dir/embeddings/$train_set/spk_xvector.scp" --top-n "$top_n" \
    --out-dir "$lm_exp_dir/scores_$score_norm" --det-plot
fi

log done "stages $stage-$stop_stage finished in $((SECONDS - t_start)) s; results under $exp_dir"
