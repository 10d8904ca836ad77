"""LibriSpeech corpus tree -> Kaldi data dirs <out>/librispeech_{train,valid,test} (+ trials), the paper's protocol.

    python -m upmp.bin.prepare_librispeech --root /data/LibriSpeech --out data
        [--protocol_dir DIR] [--protocol_cache DIR] [--protocol_url URL|none] [--seed 0]

train = train-clean-100 + train-clean-360 + train-other-500, valid = dev-clean + dev-other,
test = test-clean + test-other. Trials: --protocol_dir, else a download of the paper's lists into
--protocol_cache, else regenerated with the same rules from --seed.
"""
from __future__ import annotations

from upmp.bin.common import add_protocol_args, make_parser, protocol_kwargs, run_main, setup_logging
from upmp.recipes.librispeech import prepare_librispeech


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--root", required=True, help="LibriSpeech root holding the subset folders and SPEAKERS.TXT")
    p.add_argument("--out", required=True, help="parent of the data dirs (usually data)")
    add_protocol_args(p)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    prepare_librispeech(args.root, args.out, **protocol_kwargs(args))


if __name__ == "__main__":
    run_main(main)
