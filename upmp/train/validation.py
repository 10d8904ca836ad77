"""Validation during training: the cosine EER of full-utterance embeddings on a held-out trial list."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from upmp.errors import DataDirError

logger = logging.getLogger(__name__)


class Validator:
    """Cosine EER of full-utterance embeddings on a held-out trial list.

    The stacks come from `source` (upmp.upstream.source: cached arks, or the upstream run on
    audio), chunk by chunk at every validation, so memory holds one chunk of stacks and the
    embeddings, never the whole set's stacks. Under DDP each rank embeds every world-th
    utterance and rank 0 gathers them and scores; eer() returns None on the other ranks.
    """

    def __init__(self, trials: str, source, device, rank: int = 0, world: int = 1, chunk: int = 64):
        from upmp.data.trials import read_kaldi_trials
        self.trials = read_kaldi_trials(trials)
        self.utts = sorted({u for t in self.trials for u in t[:2]})
        available = set(source.utts)
        missing = [u for u in self.utts if u not in available]
        if missing:
            raise DataDirError(f"{trials}: trial utterance {missing[0]!r} is not in {source.where}")
        self.labels = np.array([t for *_, t in self.trials])
        self.source, self.device, self.rank, self.world, self.chunk = source, device, rank, world, chunk

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
            emb.update(zip(part, embed_stacks(model, list(self.source.stacks(part)), device=self.device)))
        model.train(was_training)
        if self.world > 1:
            parts: List[Any] = [None] * self.world
            torch.distributed.all_gather_object(parts, emb)
            emb = {u: e for part in parts for u, e in part.items()}
        if self.rank != 0:
            return None
        scores = score_trials(CosineScorer(), emb, self.trials)
        return 100 * compute_eer(scores, self.labels)


def build_validator(inputs, td, device, rank: int, world: int) -> Validator:
    """The validator for the inputs' held-out set, its stacks from the training data's kind of
    source (cached stacks read as the training set's, or audio through the training upstream)."""
    return Validator(inputs.valid_trials, td.source.for_set(inputs.valid_data_dir if inputs.online else inputs.valid_scp),
                     device, rank, world)
