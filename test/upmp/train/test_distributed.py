"""DistributedDataParallel under torchrun (2 CPU processes, gloo) against one process,
the global batch norm that makes them agree, and AMP."""

import numpy as np
import torch

from helpers import assert_same_training, losses, run_train


def test_two_processes_train_the_model_one_process_trains(ddp_dump):
    """Rows of each global batch are split over 2 gloo processes; with the global batch norm
    (train_conf.sync_batchnorm) the losses and the final model equal the 1-process run up to
    float rounding. Without it each process normalises its own half: a different model."""
    one, two, local = ddp_dump / "one", ddp_dump / "two", ddp_dump / "local_bn"
    for exp, nproc, extra in ((one, 1, ()), (two, 2, ()), (local, 2, ("--train_conf.sync_batchnorm", "false"))):
        r = run_train(ddp_dump, exp, nproc, *extra)
        assert r.returncode == 0, r.stderr[-3000:]
    assert len(losses(one)) == 6
    assert_same_training(two, one, ddp_dump)
    assert np.abs(losses(local) - losses(one)).max() > 1e-2
    assert torch.load(two / "model.pt", weights_only=True)["world_size"] == 2
    assert "2 processes" in (two / "train.log").read_text()


def test_global_batch_norm_is_batch_norm_in_one_process():
    from torch import nn

    from upmp.train.sync_bn import GlobalBatchNorm, convert_batchnorm
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv1d(3, 4, 1), nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm1d(4)))
    ref[1].weight.data.uniform_()
    conv = convert_batchnorm(nn.Sequential(nn.Conv1d(3, 4, 1), nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm1d(4))))
    conv.load_state_dict(ref.state_dict())
    assert isinstance(conv[1], GlobalBatchNorm) and isinstance(conv[2][0], GlobalBatchNorm)
    assert conv.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(5, 3, 7)
    torch.testing.assert_close(conv(x), ref(x))
    torch.testing.assert_close(conv[1].running_var, ref[1].running_var)


def test_batch_not_divisible_by_processes(ddp_dump):
    r = run_train(ddp_dump, ddp_dump / "x", 2, "--train_conf.batch_size", "7")
    # each rank prints the one line (torchrun's launcher then adds its own report of the failed ranks)
    assert r.returncode == 1 and r.stderr.startswith("train.py: error: train_conf.batch_size 7 is the global "
                                                     "batch: it must divide evenly over the 2 processes\n")


def test_bf16_autocast_on_cpu_and_fp16_needs_a_gpu(dump):
    r = run_train(dump, dump / "fp32")
    assert r.returncode == 0, r.stderr
    r = run_train(dump, dump / "bf16", 1, "--train_conf.amp", "bf16")
    assert r.returncode == 0, r.stderr
    assert "WARNING: train_conf.amp bf16 on CPU" in r.stderr and "benchmarks/amp.py" in r.stderr
    # bf16 keeps ~3 significant digits: the same training, slightly perturbed
    np.testing.assert_allclose(losses(dump / "bf16"), losses(dump / "fp32"), rtol=0.1)
    assert not np.array_equal(losses(dump / "bf16"), losses(dump / "fp32"))
    r = run_train(dump, dump / "fp16", 1, "--train_conf.amp", "fp16")
    assert r.returncode == 1 and "fp16 needs a GPU" in r.stderr and "Traceback" not in r.stderr
    r = run_train(dump, dump / "bad", 1, "--train_conf.amp", "int8")
    assert r.returncode == 1 and "train_conf.amp: 'int8' is not allowed: expected one of none, bf16, fp16" in r.stderr
