"""Weights of the authors' own code (UniPool-SV, L-TDNN, LAP) mapped onto our backends' state dicts.

    state = map_authors_state(ours, theirs, source, prefix)   # ours: a fresh backend's state_dict

`source(our_key)` names the authors' key a tensor comes from (a list of keys: stacked along a new
first axis, e.g. UniPool's L SUPERB score vectors -> our (L, L) mixing matrix); shapes that differ
only by axes of size 1 (the authors' (L, C, 1) against our (L, C)) are reshaped. Anything else is a
ModelFileError of one line naming the first key of the authors' file that does not fit: a key ours
needs and the file lacks, a tensor of another shape, or a key of the file that nothing maps.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch

from upmp.errors import ModelFileError

Source = Union[str, List[str]]


def renamer(rules: Sequence[Tuple[str, str]]) -> Callable[[str], str]:
    """source() from (our regex, their replacement) rules; the first that matches wins."""
    compiled = [(re.compile(f"^{pattern}$"), repl) for pattern, repl in rules]

    def source(key: str) -> str:
        for pattern, repl in compiled:
            if pattern.match(key):
                return pattern.sub(repl, key)
        raise KeyError(f"no rule maps {key}")  # a bug in the rules, not in the user's file
    return source


def _core(shape) -> List[int]:
    return [d for d in shape if d != 1]


def map_authors_state(ours: Dict[str, torch.Tensor], theirs: Dict[str, torch.Tensor],
                      source: Callable[[str], Source], prefix: str = "") -> Dict[str, torch.Tensor]:
    """ours (names and shapes) + theirs (the authors' sub-state, `prefix` stripped) -> a state dict for
    ours holding their tensors. Errors name the authors' full key (prefix + key)."""
    out: Dict[str, torch.Tensor] = {}
    used = set()
    for key, want in ours.items():
        src = source(key)
        keys = [src] if isinstance(src, str) else list(src)
        for k in keys:
            if k not in theirs:
                raise ModelFileError(f"{prefix}{k}: missing from the checkpoint (needed for {key}); "
                                     "a checkpoint of another kind or another version of the authors' code?")
        t = theirs[keys[0]] if isinstance(src, str) else torch.stack([theirs[k] for k in keys])
        if tuple(t.shape) != tuple(want.shape):
            if _core(t.shape) != _core(want.shape):
                shown = f"{prefix}{keys[0]}" if isinstance(src, str) else f"{prefix}{keys[0]} (and {len(keys) - 1} more)"
                raise ModelFileError(f"{shown}: shape {tuple(t.shape)} does not fit {key} of shape "
                                     f"{tuple(want.shape)}; a checkpoint of another kind or size?")
            t = t.reshape(want.shape)
        out[key] = t.to(want.dtype) if want.is_floating_point() else t
        used.update(keys)
    extra = [k for k in theirs if k not in used]
    if extra:
        raise ModelFileError(f"{prefix}{extra[0]}: a key of the checkpoint that this kind does not have "
                             f"({len(extra)} such); a checkpoint of another kind or another version of the authors' code?")
    return out
