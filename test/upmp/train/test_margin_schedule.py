"""loss_conf.margin_schedule in training: the margins applied and recorded per step, the same after a
resume, its config errors, and LMFT's fixed margin over it (in-process training: no torch import)."""
from dataclasses import replace

import numpy as np
import pytest

import upmp.train.trainer as trainer
from helpers import TRAIN_CONFIG
from upmp.errors import ConfigError
from upmp.losses import scheduled_margin
from upmp.train.lmft import lmft_config
from upmp.train.schema import MarginScheduleConf, check_train_config

SCHEDULE = {"shape": "cos", "start_step": 2, "end_step": 9, "start_margin": 0.05}


def config(**train_conf):
    return check_train_config(dict(TRAIN_CONFIG, loss_conf={"margin": 0.3, "margin_schedule": SCHEDULE},
                                   train_conf=dict(TRAIN_CONFIG["train_conf"], log_every=1, **train_conf)))


def train(dump, exp, cfg):
    inputs = trainer.Inputs(train_scp=str(dump / "dump/layers.scp"), utt2spk=str(dump / "utt2spk"))
    return trainer.train(cfg, inputs, str(exp))


def metrics(exp):
    return np.loadtxt(exp / "train_metrics.tsv", skiprows=1)


class Killed(Exception):
    pass


def test_margins_follow_the_schedule_and_a_resume_repeats_them(dump, monkeypatch):
    cfg = config()
    train(dump, dump / "whole", cfg)
    whole = metrics(dump / "whole")
    # row `done` records the margin of step done - 1 (0-based): 0.05 up to step 2, the cos ramp, then 0.3
    expected = [0.05 + (0.3 - 0.05) * 0.5 * (1 - np.cos(np.pi * min(max(s - 2, 0) / 7, 1))) for s in range(12)]
    assert whole[:, 4] == pytest.approx(expected, abs=1e-6)
    assert whole[:, 4] == pytest.approx([scheduled_margin(cfg.loss_conf.margin_schedule, cfg.loss_conf.margin, s)
                                          for s in range(12)], abs=1e-6)

    # killed during step 8 (after the checkpoint at 6), then resumed: the same margins and losses
    check = trainer._check_finite

    def kill_at_step_7(loss, step, *args):
        if step == 7:
            raise Killed()
        return check(loss, step, *args)
    monkeypatch.setattr(trainer, "_check_finite", kill_at_step_7)
    with pytest.raises(Killed):
        train(dump, dump / "resumed", cfg)
    monkeypatch.setattr(trainer, "_check_finite", check)
    train(dump, dump / "resumed", cfg)
    rows = {int(r[0]): r for r in metrics(dump / "resumed")}  # step 7 logged by both runs: the resumed one's
    resumed = np.array([rows[s] for s in sorted(rows)])
    assert resumed[:, 0].tolist() == list(range(1, 13))
    np.testing.assert_array_equal(resumed[:, 4], whole[:, 4])
    np.testing.assert_allclose(resumed[:, 1], whole[:, 1], rtol=1e-5)

    # the margin reaches the loss: without the schedule (margin 0.3 throughout) step 1's loss differs
    fixed = replace(cfg, loss_conf=replace(cfg.loss_conf, margin_schedule=MarginScheduleConf()))
    train(dump, dump / "fixed", fixed)
    assert metrics(dump / "fixed")[:, 4].tolist() == [0.3] * 12
    assert abs(metrics(dump / "fixed")[0, 1] - whole[0, 1]) > 1e-3


@pytest.mark.parametrize("schedule, message", [
    ({"shape": "linear", "start_step": 5, "end_step": 5}, "the linear ramp from step 5 to step 5 must end after it starts"),
    ({"shape": "exp", "start_step": 0, "end_step": 13}, "by train_conf.steps 12"),
    ({"shape": "log"}, "loss_conf.margin_schedule.shape: 'log' is not allowed: expected one of none, linear, exp, cos"),
    ({"shape": "cos", "end_stp": 3}, "unknown config key 'loss_conf.margin_schedule.end_stp'"),
])
def test_schedule_config_errors_are_one_line(schedule, message):
    with pytest.raises(ConfigError, match=message) as e:
        check_train_config(dict(TRAIN_CONFIG, loss_conf={"margin_schedule": schedule}))
    assert "\n" not in str(e.value)


def test_lmft_runs_at_its_fixed_margin_over_a_scheduled_base():
    phase = lmft_config(config())
    assert phase.loss_conf.margin == 0.5 and phase.loss_conf.margin_schedule.shape == "none"
    assert [scheduled_margin(phase.loss_conf.margin_schedule, phase.loss_conf.margin, s) for s in (0, 5, 1000)] == \
        [0.5, 0.5, 0.5]
