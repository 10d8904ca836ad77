"""Console scripts of setup.py (`upmp-score` ...): each runs its upmp.bin module's main through
run_main, so installed commands print expected errors as one line, as `python -m` does.

    from upmp.bin.console import score; score()   # == python -m upmp.bin.score
"""
from __future__ import annotations

import importlib

from upmp.bin.common import run_main


def __getattr__(name: str):
    if name.startswith("_"):
        raise AttributeError(name)
    module = importlib.import_module(f"upmp.bin.{name}")

    def console_main() -> None:
        run_main(module.main)
    console_main.__name__ = name
    return console_main
