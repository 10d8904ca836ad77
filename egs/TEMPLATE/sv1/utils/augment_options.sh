#!/usr/bin/env bash
# MUSAN / RIR augmentation roots of a recipe's run.sh -> options for ./sv.sh. Source it after
# utils/recipe_options.sh, with musan_root, rirs_root (empty: off) and sv_args set. Sets
#   aug_args   "--train_conf.augment.musan_root DIR --train_conf.augment.rirs_root DIR " for --train_args
#   aug_opts   (--train_mode online --train_config conf/train_upmp_online_aug.yaml) when a root is given:
#              augmentation happens on waveforms, in online training with the augmenting config
#              (the user's own flags come later and win)
# --backend with a root is refused: it picks conf/train_<backend>.yaml, which does not augment.
aug_args=""
[ -n "${musan_root}" ] && aug_args+="--train_conf.augment.musan_root ${musan_root} "
[ -n "${rirs_root}" ] && aug_args+="--train_conf.augment.rirs_root ${rirs_root} "
aug_opts=()
if [ -n "${aug_args}" ]; then
  aug_opts=(--train_mode online --train_config conf/train_upmp_online_aug.yaml)
  for _a in "${sv_args[@]}"; do
    if [[ "${_a}" == --backend* ]]; then
      echo "$0: --musan_root/--rirs_root train with an augmenting config (conf/train_upmp_online_aug.yaml);" \
        "--backend picks conf/train_<backend>.yaml, which does not augment: give --train_config instead" 1>&2
      exit 1
    fi
  done
fi
