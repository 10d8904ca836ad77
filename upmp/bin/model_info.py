"""Trainable parameters and shapes of a backend, as configured for a given upstream.

    python -m upmp.bin.model_info --config conf/train_upmp.yaml --input_dim 768 --num_layers 12 [--num_speakers 1211]

--num_layers counts Transformer layers (L); the upstream also has hidden state 0,
which the backend sees when the config says use_hidden0: true. Prints one line
per top-level module, `backend_params: <n>` (the backend without the loss head),
the loss head with --num_speakers, and the input/output shapes.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from upmp.bin.common import make_parser, positive_int, run_main, setup_logging


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--input_dim", type=positive_int, required=True, help="D of the upstream (768 Base, 1024 Large)")
    p.add_argument("--num_layers", type=positive_int, required=True, help="Transformer layers L (12 Base, 24 Large)")
    p.add_argument("--num_speakers", type=int, default=0, help="also count the loss head")
    p.add_argument("--frames", type=positive_int, default=150, help="T of the example input")
    return p


def main(argv=None) -> None:
    args, overrides = get_parser().parse_known_args(argv)
    setup_logging(args.verbose)
    from upmp.checkpoint import build_model
    from upmp.train.schema import resolve_train_config
    from upmp.data.layer_stacks import LayerStackMeta
    cfg = resolve_train_config(args.config, overrides)
    model = build_model(cfg.backend, cfg.use_hidden0, dataclasses.asdict(cfg.backend_conf),
                        LayerStackMeta(args.num_layers + 1, args.input_dim, 0.02, "model_info")).eval()
    used = args.num_layers + 1 if model.use_hidden0 else args.num_layers
    print(f"backend: {cfg.backend} (use_hidden0: {model.use_hidden0}, {used} hidden states used)")
    for name, module in model.backend.named_children():
        print(f"  {name}: {count(module)}")
    own = count(model.backend) - sum(count(m) for m in model.backend.children())
    if own:
        print(f"  (parameters of the backend itself): {own}")
    print(f"backend_params: {count(model)}")
    if args.num_speakers:
        from upmp.losses import build_loss
        head = build_loss(cfg.loss, model.embed_dim, args.num_speakers, cfg.loss_conf)
        print(f"loss_head_params: {count(head)} ({cfg.loss}, {args.num_speakers} speakers)")
    x = torch.randn(2, args.input_dim, args.num_layers + 1, args.frames)
    with torch.no_grad():
        y = model(x, torch.ones(2, args.frames, dtype=torch.bool))
    print(f"input: (B, D, L, T) = {tuple(x.shape)} (hidden state 0 included; mask (B, T))")
    print(f"output: (B, E) = {tuple(y.shape)}")


if __name__ == "__main__":
    run_main(main)
