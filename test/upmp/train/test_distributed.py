"""DistributedDataParallel under torchrun (2 CPU processes, gloo) against one process,
the global batch norm that makes them agree, and AMP."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_same_training, losses, run_train, train_env


def held_out_set(root):
    """Layer stacks of 12 utterances of 4 new speakers, close enough for a validation EER above 0,
    and all their pairs as Kaldi trials: (layers.scp, trials, {utt: (L, T, D)})."""
    from upmp.data.layer_stacks import LayerStackWriter
    rng = np.random.default_rng(5)
    stacks = {f"v{s}-u{u}": (rng.normal(size=(3, 12 + 5 * u + s, 8)) + 0.3 * s).astype(np.float32)
              for s in range(4) for u in range(3)}
    with LayerStackWriter(str(root / "valid_layers"), "float32") as w:
        for utt, x in stacks.items():
            w.write(utt, x)
    utts = sorted(stacks)
    (root / "valid_trials").write_text("".join(f"{a} {b} {'target' if a[:2] == b[:2] else 'nontarget'}\n"
                                               for i, a in enumerate(utts) for b in utts[i + 1:]))
    return root / "valid_layers.scp", root / "valid_trials", stacks


def eer_of_checkpoint(path, stacks, trials):
    """The validation EER computed here in one process: each utterance alone through the module,
    cosine scores, the EER from its definition (test/reference_metrics.py)."""
    from reference_metrics import eer_percent
    from upmp.checkpoint import load_model
    model, _ = load_model(str(path))
    with torch.no_grad():
        emb = {u: model(torch.tensor(x).permute(2, 0, 1)[None])[0].numpy() for u, x in stacks.items()}
    rows = [line.split() for line in trials.read_text().splitlines()]
    scores = [emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]) for a, b, _ in rows]
    return eer_percent(scores, np.array([t == "target" for *_, t in rows]))


def valid_rows(exp):
    rows = np.loadtxt(exp / "valid_metrics.tsv", skiprows=1)
    return dict(zip(rows[:, 0].astype(int), rows[:, 1]))


# upmp.bin.train whose every rank stops at the 2nd checkpoint (after the log rows and the validation
# of that step, before rank 0 writes checkpoints/last.pt), and waits there to be killed
HANG_AT_SECOND_CHECKPOINT = """
import sys
import time
import upmp.train.trainer as trainer
from upmp.bin.train import main
real, calls = trainer._world_mean_window, []


def hang_at_second_checkpoint(window, world, device):
    out = real(window, world, device)  # called by every rank at every checkpoint
    calls.append(1)
    if len(calls) == 2:
        open(sys.argv[-1] + ".ready", "w").close()
        time.sleep(600)
    return out


trainer._world_mean_window = hang_at_second_checkpoint
main(sys.argv[1:-1])
"""


def test_two_processes_train_the_model_one_process_trains(ddp_dump):
    """Rows of each global batch are split over 2 gloo processes; with the global batch norm
    (train_conf.sync_batchnorm) the losses and the final model equal the 1-process run up to
    float rounding. Without it each process normalises its own half: a different model.
    Validation is sharded too (each rank embeds half the utterances, rank 0 scores): its EERs
    equal the 1-process run's, and those computed here from the 2-process run's checkpoints.
    A 2-process run killed (kill -9, launcher and workers) at its 2nd checkpoint and run again
    resumes from the 1st and ends as the uninterrupted one did, bit for bit (models, log and
    validation rows)."""
    one, two, local, cut = ddp_dump / "one", ddp_dump / "two", ddp_dump / "local_bn", ddp_dump / "cut"
    valid_scp, trials, stacks = held_out_set(ddp_dump)
    log = ("--train_conf.log_every", "4")  # rows at 4, 8, 12, ...: the checkpoints (every 10) fall between them
    valid = ("--valid_scp", str(valid_scp), "--valid_trials", str(trials), "--train_conf.valid_every", "10", *log)
    for exp, nproc, extra in ((one, 1, valid), (two, 2, valid), (local, 2, ("--train_conf.sync_batchnorm", "false", *log))):
        r = run_train(ddp_dump, exp, nproc, *extra)
        assert r.returncode == 0, r.stderr[-3000:]
    assert len(losses(one)) == 8
    (ddp_dump / "hang.py").write_text(HANG_AT_SECOND_CHECKPOINT)
    ready = ddp_dump / "killed.ready"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(ddp_dump / "hang.py"), "--config", str(ddp_dump / "conf.yaml"), "--train_scp",
                             str(ddp_dump / "dump/layers.scp"), "--utt2spk", str(ddp_dump / "utt2spk"), "--exp_dir",
                             str(cut), *valid, str(ddp_dump / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=train_env())
    try:
        deadline = time.time() + 300
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the 2-process run did not reach its 2nd checkpoint"
    finally:  # kill -9 of the launcher and both workers (torchrun starts each in a session of its own)
        workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        for pid in [proc.pid] + workers:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert torch.load(cut / "checkpoints/last.pt", weights_only=True)["step"] == 10
    assert (cut / "train_metrics.tsv").read_text().splitlines()[-1].startswith("20\t")
    r = run_train(ddp_dump, cut, 2, *valid)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {cut / 'checkpoints/last.pt'} at step 10" in r.stderr
    for name in ("model.pt", "model_last.pt"):
        a, b = (torch.load(e / name, weights_only=True) for e in (two, cut))
        assert a["step"] == b["step"] and all(torch.equal(a[p][k], b[p][k]) for p in ("model", "head") for k in a[p])
    for name in ("train_metrics.tsv", "valid_metrics.tsv"):
        assert (cut / name).read_text() == (two / name).read_text(), name
    assert_same_training(two, one, ddp_dump)
    assert list(valid_rows(two)) == [10, 20, 30]
    np.testing.assert_allclose(list(valid_rows(two).values()), list(valid_rows(one).values()), atol=1e-4)
    best = torch.load(two / "model.pt", weights_only=True)["step"]
    assert valid_rows(two)[best] == min(valid_rows(two).values())
    for name, step in (("model.pt", best), ("model_last.pt", 30)):
        assert valid_rows(two)[step] == pytest.approx(eer_of_checkpoint(two / name, stacks, trials), abs=1e-4), name
    assert 0 < min(valid_rows(two).values())
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
