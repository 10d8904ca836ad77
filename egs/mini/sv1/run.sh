#!/usr/bin/env bash
# The offline mini recipe: a synthetic VoxCeleb1-layout corpus, a tiny random-init
# WavLM (built offline), the UPMP backend, cosine scoring, EER / minDCF.
#   ./run.sh --stage 0 --stop_stage 5        (any sv.sh option can be added; see ./run.sh --help)
set -euo pipefail

./sv.sh \
  --train_set voxceleb1_dev \
  --test_sets voxceleb1_test \
  --upstream wavlm_local \
  --tiny_upstream true \
  --storage float16 \
  --train_config conf/train_upmp.yaml \
  --local_data_opts "--seed 0" \
  "$@"
