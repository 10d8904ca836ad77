"""Train a backend, on cached layer stacks or online from audio; one process or torchrun.

    # cached layer stacks (stage 1)
    python -m upmp.bin.train --config conf/train_upmp.yaml \
        --train_scp dump/voxceleb1_dev/layers.scp --utt2spk data/voxceleb1_dev/utt2spk \
        --exp_dir exp/upmp [--valid_scp dump/voxceleb1_valid/layers.scp --valid_trials data/voxceleb1_valid/trials] \
        [--train_conf.steps 500 --backend_conf.conv_dim 64 ...]
    # online: the upstream runs in the training loop (train_conf.finetune_upstream to fine-tune it,
    # or --train_conf.upstream_adapter.kind lora for a LoRA adapter on the frozen upstream)
    python -m upmp.bin.train --config conf/train_upmp.yaml --train_data_dir data/voxceleb2_dev \
        --upstream wavlm_base_plus --exp_dir exp/upmp_online \
        [--valid_data_dir data/voxceleb2_valid --valid_trials data/voxceleb2_valid/trials]
    # several processes / GPUs (DistributedDataParallel; train_conf.batch_size is the global batch)
    torchrun --nproc_per_node 4 -m upmp.bin.train --config ... (same options)

With a validation list, the EER is measured every train_conf.valid_every steps and
model.pt is the checkpoint with the best validation EER (model_last.pt the last).

    # large-margin fine-tuning: continue from a trained model with the config's lmft_conf
    python -m upmp.bin.train --config conf/train_upmp.yaml --lmft_from exp/upmp/model.pt \
        --train_scp ... --utt2spk ... --exp_dir exp/upmp_lmft

Any option not listed above overrides a config key (dotted for nested keys, e.g.
--train_conf.steps 500); an unknown key or a value of the wrong type or range is an error.
Keys the YAML leaves out take their defaults (upmp/train/schema.py).
"""
from __future__ import annotations

import argparse

from upmp.bin.common import make_parser, run_main, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="training YAML: the keys that differ from the defaults "
                   "(upmp/train/schema.py)")
    p.add_argument("--exp_dir", required=True)
    cached = p.add_argument_group("cached layer stacks")
    cached.add_argument("--train_scp", help="layers.scp of the training set")
    cached.add_argument("--utt2spk", help="utt2spk of the training set")
    cached.add_argument("--valid_scp", help="layers.scp of a held-out set (validation EER)")
    online = p.add_argument_group("online (the upstream runs in the training loop)")
    online.add_argument("--train_data_dir", help="Kaldi data dir of the training set")
    online.add_argument("--valid_data_dir", help="Kaldi data dir of a held-out set")
    online.add_argument("--upstream", help="ge2e, hf:<dir> or an S3PRL name")
    online.add_argument("--upstream_ckpt", help="checkpoint path for *_local upstreams")
    p.add_argument("--valid_trials", default=None, help="Kaldi trials of the held-out set")
    p.add_argument("--lmft_from", default=None,
                   help="large-margin fine-tuning: start from this model.pt with the config's lmft_conf applied")
    return p


def main(argv=None) -> None:
    args, overrides = get_parser().parse_known_args(argv)
    setup_logging(args.verbose)
    from upmp.train.schema import resolve_train_config
    from upmp.train.trainer import Inputs, train
    cfg = resolve_train_config(args.config, overrides)
    if args.lmft_from:
        from upmp.train.lmft import lmft_config
        cfg = lmft_config(cfg, args.config)
    inputs = Inputs(train_scp=args.train_scp, utt2spk=args.utt2spk, valid_scp=args.valid_scp,
                    train_data_dir=args.train_data_dir, valid_data_dir=args.valid_data_dir,
                    valid_trials=args.valid_trials, upstream=args.upstream, upstream_ckpt=args.upstream_ckpt,
                    lmft_from=args.lmft_from)
    train(cfg, inputs, args.exp_dir)


if __name__ == "__main__":
    run_main(main)
