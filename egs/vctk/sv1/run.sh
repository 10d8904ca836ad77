#!/usr/bin/env bash
# VCTK 0.92 with the UniPool paper's protocol: p315 removed, prompts 001-024 dropped, speakers
# split 72 / 18 / 18 (train / valid / test), the paper's trial lists (16,040 valid, 16,072 test).
#   ./run.sh --vctk_root /data/VCTK-Corpus-0.92 --stage 0 --stop_stage 5   (./run.sh --help: every option)
#   ./run.sh --stage 0 --stop_stage 0 --local_data_opts "--mic mic2"      (data prep only, the mic2 channel)
#
# Corpus and protocol options (read here, handed to local/data.sh):
#   --vctk_root <dir>      corpus root (wav48_silence_trimmed/ or wav48/, speaker-info.txt) [${VCTK} of db.sh]
#   --protocol_dir <dir>   local copy of the paper's protocol files (layout of the paper repository's
#                          data/, e.g. VCTK-Corpus/speakers/speaker-test.csv); without it stage 0 downloads
#                          them (github.com/sadPororo/UniPool-SV@d5b4641) into data/local/unipool-sv, or,
#                          offline, regenerates a split and balanced trials with the same rules
#                          (--local_data_opts "--seed N"). Stage 0 prints which it used.
#
# The paper's upstreams (S3PRL names, weights from the S3PRL hub; L + 1 hidden states x D, 20 ms):
#   --upstream wav2vec2_base_960     wav2vec 2.0 Base, LibriSpeech 960 h     13 x 768
#   --upstream wav2vec2_large_960    wav2vec 2.0 Large, LibriSpeech 960 h    25 x 1024
#   --upstream wav2vec2_large_ll60k  wav2vec 2.0 Large, Libri-Light 60k h    25 x 1024
#   --upstream hubert_base           HuBERT Base                             13 x 768
#   --upstream hubert_large_ll60k    HuBERT Large                            25 x 1024
#   --upstream wavlm_base_plus       WavLM Base+ (default)                   13 x 768
#   --upstream wavlm_large           WavLM Large                             25 x 1024
# Backends: --backend "upmp ltdnn_d3net ltdnn_ecapa lap mhfa superb_ecapa xvector" (conf/train_<backend>.yaml, the paper's schedule:
# 10,000 steps of 128 x 3 s crops, OneCycle max lr 3e-3, best validation EER of every 1,000 steps).
# Disk: the cached layer stacks of the 14 h training set take about 50 GB (Base, float16), twice that for Large.
# Without a GPU: --extract_device cpu --train_args "--train_conf.device cpu" (slow).
set -euo pipefail
. ./db.sh

vctk_root=${VCTK}
protocol_dir=""
local_data_opts=""
recipe_opts="vctk_root protocol_dir local_data_opts"
. utils/recipe_options.sh

./sv.sh \
  --train_set vctk_train \
  --valid_set vctk_valid \
  --test_sets vctk_test \
  --upstream wavlm_base_plus \
  --storage float16 \
  --extract_device cuda \
  --train_config conf/train_upmp.yaml \
  --scoring "cosine plda" \
  --score_norm "none asnorm" \
  --local_data_opts "--vctk_root ${vctk_root}${protocol_dir:+ --protocol_dir ${protocol_dir}} ${local_data_opts}" \
  "${sv_args[@]}"
