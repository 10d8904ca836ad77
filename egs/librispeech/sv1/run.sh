#!/usr/bin/env bash
# LibriSpeech with the UniPool paper's protocol: train = train-clean-100 + train-clean-360 +
# train-other-500 (2,338 speakers), valid = dev-clean + dev-other (73), test = test-clean +
# test-other (73), the paper's trial lists (36,427 each).
#   ./run.sh --librispeech_root /data/LibriSpeech --stage 0 --stop_stage 5   (./run.sh --help: every option)
#
# Corpus and protocol options (read here, handed to local/data.sh):
#   --librispeech_root <dir>  corpus root (the subset folders and SPEAKERS.TXT) [${LIBRISPEECH} of db.sh]
#   --protocol_dir <dir>      local copy of the paper's protocol files (layout of the paper repository's
#                             data/, e.g. LibriSpeech/trials/trials-test.csv); without it stage 0 downloads
#                             them (github.com/sadPororo/UniPool-SV@d5b4641) into data/local/unipool-sv, or,
#                             offline, regenerates balanced trials with the same rules
#                             (--local_data_opts "--seed N"). Stage 0 prints which it used.
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
# Disk: cached layer stacks of the 960 h training set would take about 3.5 TB (Base, float16): stage 1
# caches every hidden state of every utterance. --train_mode online runs the upstream in the training
# loop instead (no stage 1; stage 3 embeds from audio), as the paper did.
# Without a GPU: --extract_device cpu --train_args "--train_conf.device cpu" (slow).
set -euo pipefail
. ./db.sh

librispeech_root=${LIBRISPEECH}
protocol_dir=""
local_data_opts=""
recipe_opts="librispeech_root protocol_dir local_data_opts"
. utils/recipe_options.sh

./sv.sh \
  --train_set librispeech_train \
  --valid_set librispeech_valid \
  --test_sets librispeech_test \
  --upstream wavlm_base_plus \
  --storage float16 \
  --extract_device cuda \
  --train_config conf/train_upmp.yaml \
  --scoring "cosine plda" \
  --score_norm "none asnorm" \
  --local_data_opts "--librispeech_root ${librispeech_root}${protocol_dir:+ --protocol_dir ${protocol_dir}} ${local_data_opts}" \
  "${sv_args[@]}"
