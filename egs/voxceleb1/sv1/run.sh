#!/usr/bin/env bash
# VoxCeleb1: train on Vox1 dev (1,211 speakers, minus 40 held out for validation), test on Vox1-O
# (cleaned veri_test2.txt), select the model on the held-out speakers (never on Vox1-O).
#   ./run.sh --voxceleb1_root /data/VoxCeleb1 --stage 0 --stop_stage 5
#   ./run.sh --upstream wavlm_large --backend "upmp ltdnn_d3net ltdnn_ecapa lap mhfa superb_ecapa xvector"
#   ./run.sh --speed_perturb true          (train on voxceleb1_dev_sp: sp0.9- / sp1.1- copies as new speakers)
# Recipe options (the rest go to ./sv.sh; ./run.sh --help lists them):
#   --voxceleb1_root DIR      [db.sh VOXCELEB1] wav/ (or vox1_dev_wav/wav + vox1_test_wav/wav), vox1_meta.csv, lists
#   --musan_root DIR, --rirs_root DIR   [empty: off] augmentation roots, passed to training as
#                             --train_conf.augment.{musan_root,rirs_root}; either one selects --train_mode online
#                             and --train_config conf/train_upmp_online_aug.yaml
#   --speed_perturb true|false  [false]
# Paper upstreams, by their S3PRL names (L Transformer layers + hidden state 0, D):
#   wav2vec2_base_960 (wav2vec 2.0 Base, 12 x 768)    wav2vec2_large_ll60k (wav2vec 2.0 Large LV-60k, 24 x 1024)
#   hubert_base (12 x 768)                            hubert_large_ll60k (24 x 1024)
#   wavlm_base_plus (12 x 768)                        wavlm_large (24 x 1024)
set -euo pipefail
. ./db.sh

voxceleb1_root=${VOXCELEB1}
musan_root=""
rirs_root=""
speed_perturb=false
train_args=""
local_data_opts=""
recipe_opts="voxceleb1_root musan_root rirs_root speed_perturb train_args local_data_opts"
. utils/recipe_options.sh
case ${speed_perturb} in true|false) ;; *) echo "$0: --speed_perturb must be true or false" 1>&2; exit 1 ;; esac
train_set=voxceleb1_dev
"${speed_perturb}" && train_set=voxceleb1_dev_sp
. utils/augment_options.sh  # aug_args, aug_opts

./sv.sh \
  --train_set "${train_set}" \
  --valid_set voxceleb1_valid \
  --test_sets voxceleb1_test \
  --upstream wavlm_base_plus \
  --extract_device cuda \
  --storage float16 \
  --train_config conf/train_upmp.yaml \
  --scoring "cosine plda" \
  --score_norm "none asnorm" \
  --local_data_opts "--voxceleb1_root ${voxceleb1_root} --speed_perturb ${speed_perturb} ${local_data_opts}" \
  --train_args "${aug_args}${train_args}" \
  "${aug_opts[@]}" "${sv_args[@]}"
