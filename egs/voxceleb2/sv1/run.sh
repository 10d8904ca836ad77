#!/usr/bin/env bash
# VoxCeleb2: train on Vox2 dev (5,994 speakers, minus 100 held out for validation), test on
# Vox1-O / Vox1-E / Vox1-H (cleaned veri_test2.txt, list_test_all2.txt, list_test_hard2.txt),
# select the model on the held-out speakers (never on a test list).
#   ./run.sh --voxceleb1_root /data/VoxCeleb1 --voxceleb2_root /data/VoxCeleb2 --stage 0 --stop_stage 5
#   ./run.sh --test_sets voxceleb1_test     (when the Vox1-E/H lists are not under the Vox1 root)
#   ./run.sh --speed_perturb true           (train on voxceleb2_dev_sp: sp0.9- / sp1.1- copies as new speakers)
#   ./run.sh --musan_root /data/musan --rirs_root /data/RIRS_NOISES
#                                           (online mode with conf/train_upmp_online_aug.yaml: the upstream
#                                            runs in the loop on augmented audio; no layer stacks cached)
#   ./run.sh --train_mode online --train_nproc 4   (online without augmentation, torchrun on 4 GPUs)
#   ./run.sh --protocol authors             (the paper authors' evaluation, below)
# Recipe options (the rest go to ./sv.sh; ./run.sh --help lists them):
#   --voxceleb1_root DIR      [db.sh VOXCELEB1] the Vox1 test sets: wav tree(s), vox1_meta.csv, lists
#   --voxceleb2_root DIR      [db.sh VOXCELEB2] dev/aac/<id>/<video>/<n>.m4a (or converted dev/wav), vox2_meta.csv
#   --musan_root DIR, --rirs_root DIR   [empty: off] augmentation roots, passed to training as
#                             --train_conf.augment.{musan_root,rirs_root}; either one selects --train_mode online
#                             and --train_config conf/train_upmp_online_aug.yaml
#   --speed_perturb true|false  [false]
#   --convert_audio none|flac|wav  [none] stage 0 converts the Vox2 m4a once (parallel jobs, resumable) to
#                             local/data.sh's --convert_dir [audio/voxceleb2] and points wav.scp there
#                             (online training then seeks crops in files instead of an ffmpeg per crop)
#   --protocol upmp|authors   [upmp] upmp: train on 5,894 dev speakers, select and calibrate on the 100 held out
#                             (voxceleb2_valid). authors: as the UniPool / L-TDNN code evaluates: train on all 5,994
#                             dev speakers (voxceleb2_dev_all), select and calibrate on the ORIGINAL Vox1-O list
#                             veri_test.txt (37,720 trials = their trials-vox1.csv; voxceleb1_test_orig), so the model
#                             is chosen on (nearly) the Vox1-O test pairs; test on Vox1-O / E / H cleaned as with upmp;
#                             experiment dirs end in _authors. Their scores differ in two conventions upmp does not
#                             copy: cosine clamped to [0, 1] (EER unchanged unless its threshold is below 0) and
#                             minDCF (P_target 0.01) not normalised: their minDCF x 100 = our minDCF. docs/method.md
#   --exp_tag TAG             [empty] suffix of the experiment dirs (with --protocol authors: authors_TAG)
# Paper upstreams, by their S3PRL names (L Transformer layers + hidden state 0, D):
#   wav2vec2_base_960 (wav2vec 2.0 Base, 12 x 768)    wav2vec2_large_ll60k (wav2vec 2.0 Large LV-60k, 24 x 1024)
#   hubert_base (12 x 768)                            hubert_large_ll60k (24 x 1024)
#   wavlm_base_plus (12 x 768)                        wavlm_large (24 x 1024)
set -euo pipefail
. ./db.sh

voxceleb1_root=${VOXCELEB1}
voxceleb2_root=${VOXCELEB2}
protocol=upmp
exp_tag=""
musan_root=""
rirs_root=""
speed_perturb=false
convert_audio=none
train_args=""
local_data_opts=""
recipe_opts="voxceleb1_root voxceleb2_root protocol exp_tag musan_root rirs_root speed_perturb convert_audio train_args local_data_opts"
. utils/recipe_options.sh
case ${speed_perturb} in true|false) ;; *) echo "$0: --speed_perturb must be true or false" 1>&2; exit 1 ;; esac
case ${protocol} in
  upmp) train_set=voxceleb2_dev valid_set=voxceleb2_valid protocol_opts="" ;;
  authors) train_set=voxceleb2_dev_all valid_set=voxceleb1_test_orig protocol_opts=" --protocol authors"
           exp_tag=authors${exp_tag:+_${exp_tag}} ;;
  *) echo "$0: --protocol must be upmp or authors" 1>&2; exit 1 ;;
esac
"${speed_perturb}" && train_set=${train_set}_sp
exp_opts=()
[ -z "${exp_tag}" ] || exp_opts=(--exp_tag "${exp_tag}")
. utils/augment_options.sh  # aug_args, aug_opts

./sv.sh \
  --train_set "${train_set}" \
  --valid_set "${valid_set}" \
  --test_sets "voxceleb1_test voxceleb1_e voxceleb1_h" \
  --upstream wavlm_base_plus \
  --extract_device cuda \
  --storage float16 \
  --train_config conf/train_upmp.yaml \
  --scoring "cosine plda" \
  --score_norm "none asnorm" \
  --local_data_opts "--voxceleb1_root ${voxceleb1_root} --voxceleb2_root ${voxceleb2_root}${protocol_opts} --speed_perturb ${speed_perturb} --convert_audio ${convert_audio} ${local_data_opts}" \
  --train_args "${aug_args}${train_args}" \
  "${exp_opts[@]}" "${aug_opts[@]}" "${sv_args[@]}"
