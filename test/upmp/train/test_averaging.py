"""Checkpoint averaging: the kept checkpoints (last K and best K), model_avg.pt = the element-wise mean
of the selected checkpoints' state dicts (batch-norm statistics included), its loading and embedding,
the entry point, and the one-line errors."""
from dataclasses import replace

import pytest
import torch

import upmp.train.trainer as trainer
from helpers import TRAIN_CONFIG, embeddings
from upmp.bin import average_checkpoints
from upmp.bin.common import run_main
from upmp.checkpoint import load_model, save_snapshot, snapshot_path
from upmp.errors import ConfigError
from upmp.train.averaging import Snapshots, select_checkpoints
from upmp.train.schema import check_train_config


def config(**train_conf):
    return check_train_config(dict(TRAIN_CONFIG, train_conf=dict(TRAIN_CONFIG["train_conf"], ckpt_every=3,
                                                                 **train_conf)))


def train(dump, exp, cfg):
    inputs = trainer.Inputs(train_scp=str(dump / "dump/layers.scp"), utt2spk=str(dump / "utt2spk"))
    return trainer.train(cfg, inputs, str(exp))


def kept(exp):
    return sorted(int(p.stem.split("_")[1]) for p in (exp / "checkpoints").glob("step_*.pt"))


def average(capsys, *args):
    """The entry point in this process (no torch import to pay): (exit status, stderr)."""
    capsys.readouterr()
    try:
        run_main(average_checkpoints.main, [str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_model_avg_is_the_mean_of_the_last_checkpoints(dump, capsys):
    exp = dump / "exp"
    train(dump, exp, config(average={"last": 3}))
    assert kept(exp) == [6, 9, 12]  # checkpoints at 3, 6, 9, 12; the last 3 kept
    snaps = [torch.load(snapshot_path(exp, s), weights_only=True) for s in (6, 9, 12)]
    avg = torch.load(exp / "model_avg.pt", weights_only=True)
    assert avg["format"] == "upmp-model" and avg["averaged"]["steps"] == [6, 9, 12] and avg["step"] == 12
    bn = [k for k in avg["model"] if k.endswith(("running_mean", "running_var"))]
    assert bn and not torch.equal(snaps[0]["model"][bn[0]], snaps[2]["model"][bn[0]])  # the statistics moved
    for part in ("model", "head"):
        for k, v in avg[part].items():
            if k.endswith("num_batches_tracked"):
                assert v == snaps[2][part][k]  # the newest's
            else:  # the arithmetic mean, computed here in float64
                mean = (snaps[0][part][k].double() + snaps[1][part][k].double() + snaps[2][part][k].double()) / 3
                torch.testing.assert_close(v, mean.float(), rtol=0, atol=1e-7)
    # the last checkpoint is model.pt (no validation); model_avg.pt loads, embeds, and differs from it
    torch.testing.assert_close(snaps[2]["model"], torch.load(exp / "model.pt", weights_only=True)["model"])
    model, _ = load_model(str(exp / "model_avg.pt"))
    (exp / "m").mkdir()
    (exp / "m/model.pt").symlink_to(exp / "model_avg.pt")
    a, b = embeddings(exp / "m", dump), embeddings(exp, dump)
    assert a.shape == b.shape and bool((a == a).all()) and not (abs(a - b) < 1e-6).all()

    # the entry point on the same experiment: the same average; another architecture's checkpoint refused
    code, err = average(capsys, "--exp", exp, "--last", 3, "--out", dump / "avg.pt")
    assert code == 0, err
    again = torch.load(dump / "avg.pt", weights_only=True)
    assert all(torch.equal(again["model"][k], avg["model"][k]) for k in avg["model"])
    other = config(keep_checkpoints=1)
    other = replace(other, backend_conf=replace(other.backend_conf, conv_dim=6))
    train(dump, dump / "other", other)
    code, err = average(capsys, "--exp", exp, snapshot_path(exp, 12), snapshot_path(dump / "other", 12),
                        "--out", dump / "mixed.pt")
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    for part in ("step_00000012.pt: another config than", "backend_conf.conv_dim = 6 there",
                 "average checkpoints of one experiment only"):
        assert part in errors[0]
    assert not (dump / "mixed.pt").exists()
    code, err = average(capsys, "--exp", exp, "--last", 2, "--out", exp / "model.pt")
    assert code == 1 and "--out" in err and "is one of the experiment's models" in err
    with pytest.raises(ConfigError, match=r"last 4 asks for more than the 3 kept checkpoints") as e:
        select_checkpoints(exp, last=4)
    assert "\n" not in str(e.value)


def test_kept_checkpoints_are_the_last_k_and_the_best_k(tmp_path):
    cfg = config(keep_checkpoints=2, valid_every=3)
    snaps = Snapshots(tmp_path, cfg, validating=True)
    assert [s for s in range(1, 13) if snaps.due(s)] == [3, 6, 9, 12]
    (tmp_path / "checkpoints").mkdir()
    for step, eer in ((3, 5.0), (6, 1.0), (9, 4.0), (12, 3.0)):
        snaps.save(step, {"config": {}, "model": {}, "head": {}, "step": step, "eer": eer})
    assert kept(tmp_path) == [6, 9, 12]  # last 2: 9, 12; best 2: 6 (1 %), 12 (3 %)
    assert select_checkpoints(tmp_path, best=2) == [snapshot_path(tmp_path, 6), snapshot_path(tmp_path, 12)]
    assert select_checkpoints(tmp_path, last=2) == [snapshot_path(tmp_path, 9), snapshot_path(tmp_path, 12)]
    # a resumed run reads back what an earlier process kept
    again = Snapshots(tmp_path, cfg, validating=True)
    again.save(12, {"config": {}, "model": {}, "head": {}, "step": 12, "eer": 0.5})
    assert kept(tmp_path) == [6, 9, 12]
    save_snapshot(snapshot_path(tmp_path, 15), {"config": {}, "model": {}, "head": {}, "step": 15, "eer": None})
    with pytest.raises(ConfigError, match="best 4 asks for more than the 3 kept checkpoints with a validation EER"):
        select_checkpoints(tmp_path, best=4)


@pytest.mark.parametrize("train_conf, validating, message", [
    ({"average": {"last": 5}}, False, "train_conf.average last: 5 is more than the 4 checkpoint / validation steps"),
    ({"average": {"best": 2}}, False, "train_conf.average best: 2 needs a validation EER per checkpoint"),
    ({"average": {"best": 5}, "valid_every": 4}, True, "best: 5 is more than the 3 validation steps"),
])
def test_more_checkpoints_than_the_run_keeps_is_one_line(tmp_path, train_conf, validating, message):
    with pytest.raises(ConfigError, match=message) as e:
        Snapshots(tmp_path, config(**train_conf), validating)
    assert "\n" not in str(e.value)


def test_average_config_errors():
    for bad in ({"last": 2, "best": 2}, {}):
        with pytest.raises(ConfigError, match="give exactly one of last: N or best: N"):
            config(average=bad)
    with pytest.raises(ConfigError, match="unknown config key 'train_conf.average.first'"):
        config(average={"first": 2})
