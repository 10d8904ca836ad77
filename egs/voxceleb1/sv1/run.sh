#!/usr/bin/env bash
# VoxCeleb1: train on Vox1 dev (1,211 speakers, minus 40 held out for validation), test on Vox1-O
# (cleaned veri_test2.txt), select the model on the held-out speakers (never on Vox1-O).
#   ./run.sh --voxceleb1_root /data/VoxCeleb1 --stage 0 --stop_stage 5
#   ./run.sh --upstream wavlm_large --backend "upmp ltdnn_d3net ltdnn_ecapa lap mhfa superb_ecapa xvector"
#   ./run.sh --speed_perturb true          (train on voxceleb1_dev_sp: sp0.9- / sp1.1- copies as new speakers)
#   ./run.sh --protocol authors --voxceleb2_root /data/VoxCeleb2   (the paper authors' evaluation, below)
# Recipe options (the rest go to ./sv.sh; ./run.sh --help lists them):
#   --voxceleb1_root DIR      [db.sh VOXCELEB1] wav/ (or vox1_dev_wav/wav + vox1_test_wav/wav), vox1_meta.csv, lists
#   --musan_root DIR, --rirs_root DIR   [empty: off] augmentation roots, passed to training as
#                             --train_conf.augment.{musan_root,rirs_root}; either one selects --train_mode online
#                             and --train_config conf/train_upmp_online_aug.yaml
#   --speed_perturb true|false  [false]
#   --protocol upmp|authors   [upmp] upmp: train on 1,171 dev speakers, select and calibrate on the 40 held out
#                             (voxceleb1_valid), test on the cleaned Vox1-O. authors: as the UniPool / L-TDNN code
#                             evaluates: train on all 1,211 dev speakers (voxceleb1_dev_all), test on the ORIGINAL
#                             Vox1-O list veri_test.txt (37,720 trials = their trials-vox1.csv; voxceleb1_test_orig),
#                             select and calibrate on balanced trials over the 118 Vox2 TEST speakers
#                             (voxceleb2_test_valid, made by the rules of their trials-vox2.csv script, seeded);
#                             experiment dirs end in _authors. Their scores differ in two conventions upmp does not
#                             copy: cosine clamped to [0, 1] (EER unchanged unless the EER threshold is <= 0) and
#                             minDCF (P_target 0.01) not normalised: their minDCF x 100 = our minDCF. docs/method.md
#   --voxceleb2_root DIR      [db.sh VOXCELEB2] --protocol authors only: test/aac/<id>/<video>/<n>.m4a (vox2_test_aac.zip
#                             unzipped into test/) or test/wav
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
train_args=""
local_data_opts=""
recipe_opts="voxceleb1_root voxceleb2_root protocol exp_tag musan_root rirs_root speed_perturb train_args local_data_opts"
. utils/recipe_options.sh
case ${speed_perturb} in true|false) ;; *) echo "$0: --speed_perturb must be true or false" 1>&2; exit 1 ;; esac
case ${protocol} in
  upmp) train_set=voxceleb1_dev valid_set=voxceleb1_valid test_sets=voxceleb1_test protocol_opts="" ;;
  authors) train_set=voxceleb1_dev_all valid_set=voxceleb2_test_valid test_sets=voxceleb1_test_orig
           exp_tag=authors${exp_tag:+_${exp_tag}}
           protocol_opts=" --protocol authors --voxceleb2_root ${voxceleb2_root}" ;;
  *) echo "$0: --protocol must be upmp or authors" 1>&2; exit 1 ;;
esac
"${speed_perturb}" && train_set=${train_set}_sp
exp_opts=()
[ -z "${exp_tag}" ] || exp_opts=(--exp_tag "${exp_tag}")
. utils/augment_options.sh  # aug_args, aug_opts

./sv.sh \
  --train_set "${train_set}" \
  --valid_set "${valid_set}" \
  --test_sets "${test_sets}" \
  --upstream wavlm_base_plus \
  --extract_device cuda \
  --storage float16 \
  --train_config conf/train_upmp.yaml \
  --scoring "cosine plda" \
  --score_norm "none asnorm" \
  --local_data_opts "--voxceleb1_root ${voxceleb1_root}${protocol_opts} --speed_perturb ${speed_perturb} ${local_data_opts}" \
  --train_args "${aug_args}${train_args}" \
  "${exp_opts[@]}" "${aug_opts[@]}" "${sv_args[@]}"
