#!/usr/bin/env bash
# The stage script shared by every egs/<corpus>/sv1 recipe: run.sh sets corpus
# options and calls it; users add flags (later flags win).
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "$0"):${BASH_LINENO[0]}) $*" 1>&2; }

# General
stage=0                 # first stage to run
stop_stage=100          # last stage to run
nj=2                    # parallel jobs for extraction
python=python3
dumpdir=dump            # layer stacks
expdir=exp              # models, embeddings, scores, RESULTS.md
# Stage 0: data preparation
local_data_opts=""      # options for local/data.sh
# Stage 1: layer stacks
upstream=wavlm_base_plus   # any S3PRL upstream name (wavlm_local etc. need --upstream_ckpt)
upstream_ckpt=""           # checkpoint path for *_local upstreams
tiny_upstream=false        # true: build a tiny random-init <kind>_local checkpoint when none is given (offline tests)
storage=float32            # float32 | float16 | compressed | int8 (see upmp/data/layer_stacks.py)
layers=all                 # hidden states kept: all | 0-12 | 0,4,8,12 | top:K:<layer_probe.tsv or <exp>/layer_usage.tsv>
extract_device=cpu
extract_max_batch_seconds=0     # >0 batches utterances (GPU throughput; padding changes Base models' features slightly)
layer_probe=false          # true: after stage 1, an EER per hidden state from the stacks alone (upmp.bin.layer_probe)
                           # -> ${dumpdir}/<upstream>/layer_probe; after stage 2, <exp>/layer_probe.png beside layer_usage.png
layer_probe_args=""        # e.g. "--max_utts_per_spk 20 --max_frames 500" to bound the time on a large training set
# Stage 2: backend training
train_mode=cached       # cached: on stage 1's layer stacks | online: the upstream runs in the training loop (no stage 1)
train_nproc=1           # >1: torchrun with this many processes (one per GPU; gloo on CPU)
train_nnodes=1          # >1: multi-node training: stage 2 runs on every node (srun / ssh), c10d rendezvous
train_rdzv_endpoint=""  # host:port of the rendezvous, the same on every node (needed with --train_nnodes > 1)
train_rdzv_id=""        # rendezvous id, the same on every node [default: $SLURM_JOB_ID, else upmp]
backend=""             # upmp, ltdnn_d3net, ltdnn_ecapa, lap, mhfa, superb_ecapa and/or xvector: uses conf/train_<backend>.yaml (a list runs each)
train_config=conf/train_upmp.yaml   # used when --backend is empty
train_args=""           # overrides of the config, e.g. "--train_conf.steps 500"
exp_tag=""              # suffix of the experiment dir name
seeds=""                # e.g. "0 1 2": one run per training seed -> <exp>_seed<N> (train --seed N), each
                        # embedded and scored; stage 5 then writes <exp>_seeds.{md,json}: mean, range, per seed
lmft=false              # true: then large-margin fine-tuning from each model (the config's lmft_conf) -> <exp>_lmft
# Stages 3-5: embeddings, scoring, metrics
scoring=cosine          # cosine and/or plda (a space-separated list scores with each)
score_norm=none         # none, snorm and/or asnorm (list); cohort = training speakers' mean embeddings
cohort_top_n=300        # AS-norm: top-N cohort scores per side
lda_dim=200             # PLDA: LDA dimension (capped at #speakers - 1)
calibration=linear      # linear and/or qmf (list), fitted on --valid_set: linear -> <scores>.llr (Cllr / actDCF of
                        # the system); qmf (score + log durations + embedding norms) -> its own system <system>.qmf
fusion=""               # systems to fuse (e.g. "cosine plda"), fitted on --valid_set -> the system "fusion" (LLRs)
train_set=""            # data/<train_set>, or a path (contains /) to a data dir prepared elsewhere
valid_set=""            # data/<valid_set> with trials: held-out list for calibration (optional)
test_sets=""            # space-separated data/<set> names (each with data/<set>/trials) or paths
trials=""               # trial lists, one per test set in order (Kaldi, WeSpeaker .kaldi, VoxCeleb, ESPnet
                        # trial_label); default: data/<set>/trials, or a path set's own trials / trial_label

help_message=$(cat <<EOF
Usage: $0 --train_set <set> --test_sets "<set> ..." [options]

Stages:
  0: data preparation (local/data.sh): Kaldi data dirs under data/ and trials
  1: layer stacks of every hidden state of the frozen upstream -> ${dumpdir}/<upstream>/<set>
     (skipped with --train_mode online)
     with --layer_probe true, then the layer probe: EER of each hidden state (cosine, PLDA) on the
     validation trials (else the first test set's) -> ${dumpdir}/<upstream>/layer_probe/layer_probe.{tsv,png}
  2: backend training (python -m upmp.bin.train; torchrun with --train_nproc > 1); with --lmft true
     then large-margin fine-tuning from the trained model (the config's lmft_conf) -> <exp>_lmft;
     a config with train_conf.average also gives <exp>_avg (its model.pt: <exp>/model_avg.pt), scored beside
  3: embedding extraction (xvector.scp per set; from audio with --train_mode online)
  4: scoring of data/<test_set>/trials (then calibration, and --fusion, on --valid_set)
  5: metrics: EER / minDCF -> <exp>/RESULTS.md

Options (default in brackets):
  --stage <n> [${stage}]  --stop_stage <n> [${stop_stage}]  --nj <n> [${nj}]
  --upstream <name> [${upstream}]  --upstream_ckpt <path> [${upstream_ckpt}]
  --tiny_upstream <true|false> [${tiny_upstream}]  --storage <float32|float16|compressed|int8> [${storage}]
  --layers <all|0-12|0,4,8,12|top:K:tsv> [${layers}]
  --extract_device <cpu|cuda> [${extract_device}]  --extract_max_batch_seconds <s> [${extract_max_batch_seconds}]
  --layer_probe <true|false> [${layer_probe}]  --layer_probe_args "<--key value ...>" [${layer_probe_args}]
  --train_mode <cached|online> [${train_mode}]  --train_nproc <n> [${train_nproc}]
  --train_nnodes <n> [${train_nnodes}]  --train_rdzv_endpoint <host:port> [${train_rdzv_endpoint}]  --train_rdzv_id <id> [${train_rdzv_id}]
  --backend "<upmp ltdnn_d3net ltdnn_ecapa lap mhfa superb_ecapa xvector>" [${backend}]  --train_config <yaml> [${train_config}]
  --train_args "<--key value ...>" [${train_args}]
  --exp_tag <tag> [${exp_tag}]  --seeds "<n ...>" [${seeds}]  --lmft <true|false> [${lmft}]  --scoring "<cosine plda>" [${scoring}]
  --score_norm "<none snorm asnorm>" [${score_norm}]  --cohort_top_n <n> [${cohort_top_n}]  --lda_dim <n> [${lda_dim}]
  --calibration "<linear qmf>" [${calibration}]  --fusion "<systems, e.g. cosine plda>" [${fusion}]
  --train_set <name|path> [${train_set}]  --valid_set <name|path> [${valid_set}]  --test_sets "<names|paths>" [${test_sets}]
  --trials "<list per test set>" [${trials}]
     A set given as a path (anything with a /) is a Kaldi / ESPnet / WeSpeaker data dir prepared
     elsewhere: it is imported read-only into data/<its name> (upmp.bin.import_data_dir).
  --local_data_opts "<opts>" [${local_data_opts}]  --dumpdir <dir> [${dumpdir}]  --expdir <dir> [${expdir}]
EOF
)

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

# stage numbers first: a typo would otherwise make every stage test a shell error, run nothing and "succeed"
for _opt in stage stop_stage; do
  if ! [[ "${!_opt}" =~ ^[0-9]+$ ]]; then log "--${_opt} '${!_opt}': expected a non-negative integer (the stages are 0-5)"; exit 1; fi
done
# (--stage 1 --stop_stage 0 is an idiom: import the sets given as paths, run no stage)
if [ "${stage}" -gt "${stop_stage}" ]; then log "--stage ${stage} is after --stop_stage ${stop_stage}: no stage runs"; fi
for _seed in ${seeds}; do
  if ! [[ "${_seed}" =~ ^[0-9]+$ ]]; then log "--seeds '${seeds}': '${_seed}' is not a non-negative integer (e.g. --seeds \"0 1 2\")"; exit 1; fi
done
if [ -n "${seeds}" ] && [ "$(tr ' ' '\n' <<< "${seeds}" | grep -c .)" -ne "$(tr ' ' '\n' <<< "${seeds}" | grep . | sort -u | wc -l)" ]; then
  log "--seeds '${seeds}': a seed is given twice"; exit 1
fi
if [ $# -ne 0 ]; then log "unexpected arguments: $*\n${help_message}"; exit 1; fi
if [ -z "${train_set}" ] || [ -z "${test_sets}" ]; then log "--train_set and --test_sets are required"; exit 1; fi
for m in ${scoring}; do case ${m} in cosine|plda) ;; *) log "unknown --scoring ${m} (cosine, plda)"; exit 1 ;; esac; done
case ${train_mode} in cached|online) ;; *) log "unknown --train_mode ${train_mode} (cached, online)"; exit 1 ;; esac
if "${layer_probe}" && [ "${train_mode}" == online ]; then
  log "--layer_probe true needs stage 1's cached stacks: run it with --train_mode cached (online training caches nothing)"; exit 1
fi
for n in ${score_norm}; do case ${n} in none|snorm|asnorm) ;; *) log "unknown --score_norm ${n} (none, snorm, asnorm)"; exit 1 ;; esac; done
for c in ${calibration}; do case ${c} in linear|qmf) ;; *) log "unknown --calibration ${c} (linear, qmf)"; exit 1 ;; esac; done
systems=""
for m in ${scoring}; do for n in ${score_norm}; do systems+=" ${m}$([ "${n}" == none ] || echo ".${n}")"; done; done
result_systems=${systems}  # stage 5's rows: each system, and its QMF-calibrated twin
[ -n "${valid_set}" ] && [[ " ${calibration} " == *" qmf "* ]] && for s in ${systems}; do result_systems+=" ${s}.qmf"; done
if [ -n "${fusion}" ]; then  # checked before any stage runs; fitted in stage 4 (upmp.scoring.stage)
  [ -n "${valid_set}" ] || { log "--fusion \"${fusion}\" needs --valid_set: the fusion is fitted on its trials"; exit 1; }
  for f in ${fusion}; do
    [[ " ${systems} " == *" ${f} "* ]] || { log "--fusion: ${f} is not a system of this run (${systems# }); fuse systems of --scoring / --score_norm"; exit 1; }
  done
  [ "$(wc -w <<< "${fusion}")" -ge 2 ] || { log "--fusion \"${fusion}\": give two or more systems (e.g. \"cosine plda\")"; exit 1; }
  result_systems+=" fusion"
fi

# Sets given as paths are imported into data/<name> (read-only on the source; a name already taken
# by another source gets a suffix), --trials converted to Kaldi form beside them; a set of ours (a
# name, or a path to data/<name>) is used as it is, its --trials converted after stage 0 (which
# writes data/<set>). The rule lives in upmp.data.import_dir; these print the names under data/.
import_sets() { ${python} -m upmp.bin.import_data_dir --data_root data "$@"; }
given_test_sets=${test_sets}
train_set=$(import_sets --src "${train_set}")
[ -z "${valid_set}" ] || valid_set=$(import_sets --src "${valid_set}" --require_trials)
# shellcheck disable=SC2086
test_sets=$(import_sets --src ${given_test_sets} --trials ${trials} --require_trials)

if [ -z "${upstream_ckpt}" ] && [[ "${upstream}" == *_local ]]; then
  if ! "${tiny_upstream}"; then log "--upstream ${upstream} needs --upstream_ckpt (or --tiny_upstream true)"; exit 1; fi
  upstream_ckpt=${expdir}/upstream/${upstream%_local}_tiny.pt
fi
upstream_tag=${upstream}
[ -n "${upstream_ckpt}" ] && upstream_tag=${upstream}_$(basename "${upstream_ckpt%.*}")
# a layer subset has its own dump and experiments (the stacks' layer_stack.json records it), named by
# the hidden states it resolves to (top:K:<tsv> included; no comma: kaldiio's ark,scp: spec splits on it)
if [ "${layers}" != all ]; then
  layers_tag=$(${python} -c 'import sys
from upmp.data.layer_stacks import layers_text, parse_layers
from upmp.errors import UpmpError
try:
    print(layers_text(parse_layers(sys.argv[1])).replace(",", "_"))
except UpmpError as e:
    sys.exit(f"sv.sh: error: {e}")' "${layers}") || exit 1
  upstream_tag=${upstream_tag}_layers${layers_tag}
fi
dump=${dumpdir}/${upstream_tag}
train_configs=${train_config}
if [ -n "${backend}" ]; then
  train_configs=""
  for b in ${backend}; do
    [ -f "conf/train_${b}.yaml" ] || { log "--backend ${b}: conf/train_${b}.yaml not found"; exit 1; }
    train_configs+=" conf/train_${b}.yaml"
  done
fi

# --layer_probe: speaker information per hidden state of the stacks (reused while up to date); args: exp dirs
layer_probe_run() {
  local probe_set=${valid_set:-${test_sets%% *}}
  # shellcheck disable=SC2086
  ${python} -m upmp.bin.layer_probe --train_scp "${dump}/${train_set}/layers.scp" --utt2spk "data/${train_set}/utt2spk" \
    --trials_scp "${dump}/${probe_set}/layers.scp" --trials "data/${probe_set}/trials" --out_dir "${dump}/layer_probe" \
    ${layer_probe_args} ${1:+--exp_dirs} "$@"
}

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
  log "Stage 0: data preparation"
  if [ -x local/data.sh ]; then
    # shellcheck disable=SC2086
    local/data.sh ${local_data_opts}
  else
    log "no local/data.sh in this recipe: bring your own Kaldi data dirs under data/"
  fi
  for set in ${train_set} ${valid_set} ${test_sets}; do utils/validate_data_dir.sh --no-text --no-feats "data/${set}"; done
fi

# --trials of our sets replace data/<set>/trials (stage 0's own list too), also when the run starts
# later; rewritten only when changed (stage 4 rescores when the trials are newer)
# shellcheck disable=SC2086
[ -z "${trials}" ] || import_sets --src ${given_test_sets} --trials ${trials} --convert_ours

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 1 ] && [ -n "${upstream_ckpt}" ] && [ ! -f "${upstream_ckpt}" ]; then
  if "${tiny_upstream}"; then
    log "building tiny random-init ${upstream} checkpoint ${upstream_ckpt}"
    ${python} -m upmp.bin.build_tiny_upstream --kind "${upstream%_local}" --out "${upstream_ckpt}"
  else
    log "upstream checkpoint ${upstream_ckpt} not found"; exit 1
  fi
fi
upstream_opts="--upstream ${upstream}${upstream_ckpt:+ --upstream_ckpt ${upstream_ckpt}}"
train_launcher="${python}"
train_log=train.stdout.log
if [ "${train_nnodes}" -gt 1 ]; then  # this is one of the nodes; README "Multi-node training"
  [ -n "${train_rdzv_endpoint}" ] || { log "--train_nnodes ${train_nnodes} needs --train_rdzv_endpoint <host:port>"; exit 1; }
  train_launcher="${python} -m torch.distributed.run --nnodes ${train_nnodes} --nproc_per_node ${train_nproc}"
  train_launcher+=" --rdzv_backend c10d --rdzv_endpoint ${train_rdzv_endpoint} --rdzv_id ${train_rdzv_id:-${SLURM_JOB_ID:-upmp}}"
  train_log=train.stdout.$(hostname -s).$$.log  # one per node: the exp dir is shared
elif [ "${train_nproc}" -gt 1 ]; then
  train_launcher="${python} -m torch.distributed.run --standalone --nproc_per_node ${train_nproc}"
fi

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ] && [ "${train_mode}" == online ]; then
  log "Stage 1: skipped (--train_mode online: the upstream runs in stages 2 and 3, nothing is cached)"
elif [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
  log "Stage 1: layer stacks of ${upstream} -> ${dump}"
  # once, before any job: an upstream that cannot be built here (no network for its weights, a
  # wrong name) is one line now, not one traceback per job; S3PRL weights are downloaded here
  # shellcheck disable=SC2086
  ${python} -m upmp.bin.check_upstream ${upstream_opts} --layers "${layers}" 1>&2
  # shellcheck disable=SC2154
  if [[ "${extract_device}" == cuda* ]]; then cmd=${cuda_cmd}; else cmd=${train_cmd}; fi  # GPU jobs, as in stage 3
  for set in ${train_set} ${valid_set} ${test_sets}; do
    out=${dump}/${set}
    # shellcheck disable=SC2206
    reuse_layers=(${python} -m upmp.bin.reuse_layers --data_dir "data/${set}" --out_dir "${out}" --upstream "${upstream}"
                  ${upstream_ckpt:+--upstream_ckpt "${upstream_ckpt}"} --storage "${storage}" --layers "${layers}")
    # complete (logged, skipped) while ${out}/layers.scp.done matches data/${set} and the stacks asked for
    state=$("${reuse_layers[@]}" --check)
    [ "${state}" == stale ] || continue
    # the stacks it can reuse (this set's finished jobs of an interrupted run, other sets' stacks of the
    # same audio: Vox1-O/H lie in Vox1-E) go to reused.scp, the rest to ${out}/todo; it prints their number
    # shellcheck disable=SC2086
    n_todo=$("${reuse_layers[@]}" --sets ${train_set} ${valid_set} ${test_sets})
    # arks are never rewritten (another set's reused.scp may point into them): each run writes new ones;
    # a job's scp appears only when the job is complete
    run_id=$(date +%Y%m%d%H%M%S)
    if [ "${n_todo}" -gt 0 ]; then
      n_jobs=$(( n_todo < nj ? n_todo : nj ))
      utils/split_data.sh --per-utt "${out}/todo" "${n_jobs}"
      mkdir -p "${out}/log"
      ${cmd} JOB=1:"${n_jobs}" "${out}/log/extract.JOB.log" \
        ${python} -m upmp.bin.extract_layers --data_dir "${out}/todo/split${n_jobs}utt/JOB" --source_data_dir "data/${set}" \
          --out_prefix "${out}/layers.${run_id}.JOB" --upstream "${upstream}" ${upstream_ckpt:+--upstream_ckpt "${upstream_ckpt}"} \
          --storage "${storage}" --layers "${layers}" --device "${extract_device}" --max_batch_seconds "${extract_max_batch_seconds}" \
          --purpose "$([ "${set}" == "${train_set}" ] && echo train || echo test)"
    fi
    ${python} -m upmp.bin.join_layers --data_dir "data/${set}" --out_dir "${out}" --run_id "${run_id}"
  done
  if "${layer_probe}"; then layer_probe_run; fi
fi

# <config>[@<seed>][:lmft][:avg] in training order: each model (per seed with --seeds), then (--lmft true)
# its large-margin fine-tuning; :avg = the checkpoint average of the run before it (train_conf.average)
runs=""
for c in ${train_configs}; do
  for s in ${seeds:-none}; do
    run=${c}$([ "${s}" == none ] || echo "@${s}")
    runs+=" ${run} ${run}:avg"; if "${lmft}"; then runs+=" ${run}:lmft ${run}:lmft:avg"; fi
  done
done
seed_exps=""  # <exp of the seeds' mean>=<its seed exps, comma-separated> (stage 5 with --seeds)
for run in ${runs}; do
  avg_of=""; if [ "${run}" != "${run%:avg}" ]; then avg_of=yes; run=${run%:avg}; fi
  train_config=${run%:lmft}
  seed=""; if [[ "${train_config}" == *@* ]]; then seed=${train_config##*@}; train_config=${train_config%@*}; fi
  backend_tag=$(basename "${train_config%.*}"); backend_tag=${backend_tag#train_}
  exp=${expdir}/${backend_tag}_${upstream_tag}$([ "${train_mode}" == cached ] || echo _online)${exp_tag:+_${exp_tag}}
  mean_exp=${exp}_seeds
  [ -z "${seed}" ] || exp=${exp}_seed${seed}
  base_exp=""  # LMFT: the experiment whose model.pt it continues from
  if [ "${run}" != "${run%:lmft}" ]; then base_exp=${exp}; exp=${exp}_lmft; mean_exp=${mean_exp%_seeds}_lmft_seeds; fi
  if [ -n "${avg_of}" ]; then  # <exp>_avg: stages 3-5 on <exp>/model_avg.pt (none: the config does not average)
    avg_of=${exp}; exp=${exp}_avg; mean_exp=${mean_exp%_seeds}_avg_seeds
    [ -f "${avg_of}/model_avg.pt" ] || continue
    # an <exp>_avg made by hand (a real model.pt, not our link) is never replaced
    if [ -e "${exp}/model.pt" ] && [ "$(readlink "${exp}/model.pt")" != "../${avg_of##*/}/model_avg.pt" ]; then
      log "${exp}/model.pt exists and is not the link to ${avg_of}/model_avg.pt: rename that experiment (or use --exp_tag); nothing replaced"; exit 1
    fi
    mkdir -p "${exp}"
    for f in model_avg.pt:model.pt config.yaml:config.yaml train_summary.json:train_summary.json; do
      ln -sfn "../${avg_of##*/}/${f%%:*}" "${exp}/${f##*:}"
    done
  fi
  if [ -n "${seed}" ]; then
    case " ${seed_exps} " in
      *" ${mean_exp}="*) seed_exps=$(sed "s|\( ${mean_exp}=[^ ]*\)|\1,${exp}|" <<< " ${seed_exps}") ;;
      *) seed_exps+=" ${mean_exp}=${exp}" ;;
    esac
  fi

  if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ] && [ -z "${avg_of}" ]; then
    log "Stage 2: backend training -> ${exp}${base_exp:+ (large-margin fine-tuning of ${base_exp}/model.pt)}"
    if [ -f "${exp}/model.pt" ]; then
      log "${exp}/model.pt exists, skipping (delete it, or set --exp_tag, to train again)"
    else
      mkdir -p "${exp}"
      if [ "${train_mode}" == online ]; then
        inputs="--train_data_dir data/${train_set} ${upstream_opts} --layers '${layers}'"  # quoted: a YAML string
        [ -n "${valid_set}" ] && inputs+=" --valid_data_dir data/${valid_set} --valid_trials data/${valid_set}/trials"
      else
        inputs="--train_scp ${dump}/${train_set}/layers.scp --utt2spk data/${train_set}/utt2spk"
        [ -n "${valid_set}" ] && inputs+=" --valid_scp ${dump}/${valid_set}/layers.scp --valid_trials data/${valid_set}/trials"
      fi
      # the job's output goes to ${train_log}; train.log's lines (step, loss, s/step) also to the terminal
      tail -n 0 -F --pid=$$ "${exp}/train.log" 1>&2 2>/dev/null &
      follow=$!
      rc=0
      # shellcheck disable=SC2086,SC2154
      ${cuda_cmd} $([ "${train_nproc}" -gt 1 ] && echo "--gpu ${train_nproc}") "${exp}/${train_log}" \
        ${train_launcher} -m upmp.bin.train --config "${train_config}" ${inputs} --exp_dir "${exp}" \
          ${base_exp:+--lmft_from "${base_exp}/model.pt"} ${train_args} ${seed:+--seed "${seed}"} || rc=$?
      sleep 1; kill "${follow}" 2>/dev/null || true
      [ "${rc}" -eq 0 ] || exit "${rc}"
    fi
    if "${layer_probe}" && [ "${train_mode}" == cached ]; then layer_probe_run "${exp}"; fi
  fi

  if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    log "Stage 3: embeddings"
    for set in ${train_set} ${valid_set} ${test_sets}; do
      out=${exp}/embeddings/${set}
      inputs="--layers_scp ${dump}/${set}/layers.scp --utt2spk data/${set}/utt2spk"
      cmd=${decode_cmd}
      if [ "${train_mode}" == online ]; then  # the upstream runs here: a GPU job when extracting on cuda
        inputs="--data_dir data/${set} ${upstream_opts}"
        [[ "${extract_device}" == cuda* ]] && cmd=${cuda_cmd}
      fi
      # complete (logged, skipped) while <out>/xvector.scp.done matches the model, inputs and options
      # shellcheck disable=SC2086
      state=$(${python} -m upmp.bin.extract_embeddings --model "${exp}/model.pt" ${inputs} --out_dir "${out}" --check)
      [ "${state}" == stale ] || continue
      mkdir -p "${out}"
      if [ "${train_mode}" == online ]; then inputs+=" --device ${extract_device}"; fi
      # shellcheck disable=SC2086,SC2154
      ${cmd} "${out}/extract.log" \
        ${python} -m upmp.bin.extract_embeddings --model "${exp}/model.pt" ${inputs} --out_dir "${out}"
    done
  fi

  if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    log "Stage 4: scoring (${systems# }), then ${calibration} calibration${fusion:+ and fusion of ${fusion}} on ${valid_set:-no validation set}"
    # per system (<set>.<method>[.<norm>]): skipped while its <scores>.done matches (upmp.scoring.stage), else
    # scored, calibrated (test sets: .llr / .qmf), ids mapped back for imported sets, options in .opts
    # shellcheck disable=SC2086
    ${python} -m upmp.bin.score_sets --exp_dir "${exp}" --data_root data --train_set "${train_set}" \
      ${valid_set:+--valid_set "${valid_set}"} --test_sets ${test_sets} --scoring ${scoring} --score_norm ${score_norm} \
      --lda_dim "${lda_dim}" --cohort_top_n "${cohort_top_n}" --calibration ${calibration} --fusion ${fusion}
  fi

  if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    log "Stage 5: metrics -> ${exp}/RESULTS.md"
    # shellcheck disable=SC2086
    ${python} -m upmp.bin.write_results --exp_dir "${exp}" --systems ${result_systems} \
      --upstream "${upstream}" --test_sets ${test_sets}
    cat "${exp}/RESULTS.md"
  fi
done

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
  for group in ${seed_exps}; do  # --seeds: mean, range and per-seed rows of each model
    mean_exp=${group%%=*}
    # shellcheck disable=SC2046
    ${python} -m upmp.bin.results $(tr ',' ' ' <<< "${group#*=}") --out "${mean_exp}" > /dev/null
    log "mean and range over seeds ${seeds}: ${mean_exp}.md"
    cat "${mean_exp}.md"
  done
  # one table over every experiment of this upstream that has results (the backend comparison)
  ${python} -m upmp.bin.compare_results --out "${expdir}/RESULTS.md" --exp_dirs "${expdir}"/*_"${upstream_tag}"*/
  log "comparison of backends: ${expdir}/RESULTS.md"
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
