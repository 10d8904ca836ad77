"""Where training runs: the device, torchrun's processes (DistributedDataParallel) and AMP.

    procs = processes()                       # rank, world size, local rank from torchrun's environment
    with process_group(procs, "cuda"):        # nccl on GPUs, gloo on CPUs (nothing when world == 1)
        device = resolve_device("cuda", procs)
        dtype = amp_dtype("bf16", device)     # None: no autocast
        with autocast(device, dtype)(): ...
        mean = world_mean(t, procs.world)     # every rank takes part

The trainer's only place for torch.distributed / torch.cuda / torch.autocast decisions.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Optional

import torch
from torch import nn

from upmp.errors import ConfigError

logger = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the experiment dir and logs."""
        return self.rank == 0


def processes() -> Processes:
    """(rank, world size, local rank) from torchrun's environment (one process without it)."""
    return Processes(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def process_group(procs: Processes, device_name: str) -> Iterator[None]:
    """torch.distributed's process group for the run (several processes only), destroyed on leaving."""
    if procs.world > 1:
        from datetime import timedelta
        backend = "nccl" if device_name.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(procs.local_rank)
        # generous: a rank may wait on another's checkpoint writing or validation chunk
        torch.distributed.init_process_group(backend, timeout=timedelta(hours=2))
    try:
        yield
    finally:
        if procs.world > 1:
            torch.distributed.destroy_process_group()


def resolve_device(name: str, procs: Processes) -> torch.device:
    """train_conf.device -> this process's device (under torchrun: the GPU of its local rank)."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train_conf.device {name}: no GPU is visible")
        return torch.device("cuda", procs.local_rank if procs.world > 1 else torch.device(name).index or 0)
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of train_conf.amp: AMP pays only where the device has fast bf16 / fp16 arithmetic."""
    dtype = AMP_DTYPES[amp]
    if dtype is torch.float16 and device.type != "cuda":
        raise ConfigError("train_conf.amp fp16 needs a GPU (train_conf.device cuda); use none on CPU")
    if dtype is torch.bfloat16 and device.type == "cpu":
        # kept (its numerics can be checked on CPU) but warned: AMP is for GPUs; on CPUs its speed
        # depends on the chip and the thread count (benchmarks/amp.py measures it)
        logger.warning("train_conf.amp bf16 on CPU: no speed-up to count on (it depends on the chip and the "
                       "threads, see docs/benchmarks.md); time it here with benchmarks/amp.py, else use amp: none")
    fast_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype is torch.bfloat16 and device.type == "cuda" and not fast_bf16:
        raise ConfigError(f"train_conf.amp bf16: {torch.cuda.get_device_name(device)} has no fast bf16 "
                          "(compute capability < 8.0); use amp fp16 or none")
    return dtype


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> Callable[[], ContextManager]:
    """A factory of the forward pass's autocast context (a no-op without AMP)."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: Optional[torch.dtype]) -> torch.amp.GradScaler:
    """Loss scaling, on for fp16 only (bf16 has float32's range)."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


def distribute(module: nn.Module, device: torch.device, procs: Processes, find_unused: bool) -> nn.Module:
    """The module under DistributedDataParallel when there are several processes, else itself."""
    if procs.world == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused)


def world_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    """t summed over the processes, in place (every rank must call it)."""
    if world > 1:
        torch.distributed.all_reduce(t)
    return t


def world_mean(t: torch.Tensor, world: int) -> torch.Tensor:
    """t averaged over the processes, in place (every rank must call it)."""
    if world > 1:
        torch.distributed.all_reduce(t)
        t /= world
    return t


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
