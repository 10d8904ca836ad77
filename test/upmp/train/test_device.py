"""upmp.train.device: torchrun's processes, the device, AMP's dtype and autocast, one-process no-ops."""
import logging

import pytest
import torch

from upmp.errors import ConfigError
from upmp.train import device as dev


def test_processes_from_torchrun_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dev.processes() == dev.Processes(0, 1, 0) and dev.processes().main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    procs = dev.processes()
    assert (procs.rank, procs.world, procs.local_rank, procs.main) == (3, 4, 1, False)


def test_device_and_amp_choices(caplog):
    one = dev.Processes()
    cpu = dev.resolve_device("cpu", one)
    assert cpu == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^train_conf.device cuda:1: no GPU is visible$"):
            dev.resolve_device("cuda:1", one)
    assert dev.amp_dtype("none", cpu) is None
    with pytest.raises(ConfigError, match=r"^train_conf.amp fp16 needs a GPU \(train_conf.device cuda\); use none on CPU$"):
        dev.amp_dtype("fp16", cpu)
    with caplog.at_level(logging.WARNING, logger="upmp.train.device"):
        assert dev.amp_dtype("bf16", cpu) is torch.bfloat16
    assert "train_conf.amp bf16 on CPU" in caplog.text
    a = torch.ones(2, 3)
    with dev.autocast(cpu, None)():
        assert (a @ a.T).dtype == torch.float32
    with dev.autocast(cpu, torch.bfloat16)():
        assert (a @ a.T).dtype == torch.bfloat16
    assert not dev.grad_scaler(cpu, torch.bfloat16).is_enabled()  # loss scaling is for fp16 only


def test_one_process_needs_no_communication():
    one = dev.Processes()
    module = torch.nn.Linear(2, 2)
    assert dev.distribute(module, torch.device("cpu"), one, find_unused=False) is module
    t = torch.tensor([1.0, 3.0])
    assert dev.world_mean(t, 1) is t and dev.world_sum(t, 1).tolist() == [1.0, 3.0]
    dev.barrier(1)
    with dev.process_group(one, "cpu"):
        assert not torch.distributed.is_initialized()
