"""Train a backend on cached layer stacks.

    python -m upmp.bin.train --config conf/train_upmp.yaml \
        --train_scp dump/voxceleb1_dev/layers.scp --utt2spk data/voxceleb1_dev/utt2spk \
        --exp_dir exp/upmp [--valid_scp dump/voxceleb1_valid/layers.scp --valid_trials data/voxceleb1_valid/trials] \
        [--train_conf.steps 500 --backend_conf.conv_dim 64 ...]

With a validation list, the EER is measured every train_conf.valid_every steps and
model.pt is the checkpoint with the best validation EER (model_last.pt the last).

Any option not listed above overrides a key of the YAML config (dotted for
nested keys); an unknown key is an error.
"""
from __future__ import annotations

import argparse

from upmp.bin.common import fail, setup_logging
from upmp.config import ConfigError, load_config
from upmp.data.kaldi_dir import DataDirError

REQUIRED = {
    "": ["seed", "use_hidden0", "backend", "backend_conf", "loss", "loss_conf", "optim_conf", "train_conf"],
    "optim_conf": ["lr", "weight_decay", "pct_start", "grad_clip"],
    "train_conf": ["steps", "batch_size", "crop_seconds", "sampling", "spanout_prob", "spanout_span",
                   "spanout_rate", "log_every", "ckpt_every", "valid_every", "preload", "num_threads", "device"],
}


def check_required(cfg: dict, path: str) -> None:
    for section, keys in REQUIRED.items():
        node = cfg[section] if section else cfg
        missing = [k for k in keys if k not in node]
        if missing:
            where = f"{section}." if section else ""
            raise ConfigError(f"{path}: missing config key(s): {', '.join(where + k for k in missing)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--train_scp", required=True, help="layers.scp of the training set")
    p.add_argument("--utt2spk", required=True)
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--valid_scp", default=None, help="layers.scp of a held-out set (validation EER)")
    p.add_argument("--valid_trials", default=None, help="Kaldi trials of the held-out set")
    args, overrides = p.parse_known_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, overrides)
        check_required(cfg, args.config)
        from upmp.train.trainer import train
        if bool(args.valid_scp) != bool(args.valid_trials):
            raise ValueError("--valid_scp and --valid_trials go together")
        train(cfg, args.train_scp, args.utt2spk, args.exp_dir, args.valid_scp, args.valid_trials)
    except (ConfigError, DataDirError, FileNotFoundError, ValueError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
