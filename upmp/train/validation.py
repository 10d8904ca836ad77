"""Validation during training: the cosine EER of full-utterance embeddings on a held-out trial list."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from upmp.errors import DataDirError

logger = logging.getLogger(__name__)


class Validator:
    """Cosine EER of full-utterance embeddings on a held-out trial list.

    load(utts) -> list of (L, T, D) stacks (from cached arks, or the upstream run on audio),
    called chunk by chunk at every validation, so memory holds one chunk of stacks and the
    embeddings, never the whole set's stacks. Under DDP each rank embeds every world-th
    utterance and rank 0 gathers them and scores; eer() returns None on the other ranks.
    """

    def __init__(self, trials: str, available, source: str, load: Callable[[List[str]], List[np.ndarray]],
                 device, rank: int = 0, world: int = 1, chunk: int = 64):
        from upmp.data.trials import read_kaldi_trials
        self.trials = read_kaldi_trials(trials)
        self.utts = sorted({u for t in self.trials for u in t[:2]})
        missing = [u for u in self.utts if u not in available]
        if missing:
            raise DataDirError(f"{trials}: trial utterance {missing[0]!r} is not in {source}")
        self.labels = np.array([t for *_, t in self.trials])
        self.load, self.device, self.rank, self.world, self.chunk = load, device, rank, world, chunk

    def eer(self, model) -> Optional[float]:
        from upmp.embeddings import embed_stacks
        from upmp.metrics import compute_eer
        from upmp.scoring.scorers import CosineScorer, score_trials
        mine = self.utts[self.rank::self.world]
        was_training = model.training
        model.eval()
        emb: Dict[str, np.ndarray] = {}
        for start in range(0, len(mine), self.chunk):
            part = mine[start:start + self.chunk]
            emb.update(zip(part, embed_stacks(model, self.load(part), device=self.device)))
        model.train(was_training)
        if self.world > 1:
            parts: List[Any] = [None] * self.world
            torch.distributed.all_gather_object(parts, emb)
            emb = {u: e for part in parts for u, e in part.items()}
        if self.rank != 0:
            return None
        scores = score_trials(CosineScorer(), emb, self.trials)
        return 100 * compute_eer(scores, self.labels)


def _online_stacks(upstream, data, data_dir: str, device) -> Callable[[List[str]], List[np.ndarray]]:
    from upmp.embeddings import upstream_stacks

    def load(utts: List[str]) -> List[np.ndarray]:
        was_training = upstream.training
        upstream.eval()
        stacks = list(upstream_stacks(upstream, data, utts, device, source=f"{data_dir}/wav.scp"))
        upstream.train(was_training)
        return stacks
    return load


def build_validator(inputs, meta, upstream, device, rank: int, world: int) -> Validator:
    """The validator for the inputs' held-out set (cached stacks, or audio through the upstream)."""
    if inputs.online:
        from upmp.data.kaldi_dir import DataDir
        vdata = DataDir.load(inputs.valid_data_dir)
        return Validator(inputs.valid_trials, set(vdata.utts), inputs.valid_data_dir,
                         _online_stacks(upstream, vdata, inputs.valid_data_dir, device), device, rank, world)
    from upmp.data.kaldi_dir import read_table
    from upmp.data.layer_stacks import load_stack
    entries = read_table(inputs.valid_scp)
    return Validator(inputs.valid_trials, entries, inputs.valid_scp,
                     lambda utts: [load_stack(entries[u], meta.num_layers) for u in utts], device, rank, world)
