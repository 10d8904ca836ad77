"""Large-margin fine-tuning: the phase's config, a start from the base model's weights (backend and loss
head), its own experiment dir, and its errors."""

import pytest
import torch
import yaml

from helpers import TRAIN_CONFIG
import forkserver  # test/forkserver.py
from upmp.errors import ConfigError
from upmp.train.lmft import lmft_config
from upmp.train.schema import check_train_config

LMFT = {"steps": 6, "crop_seconds": 0.8, "valid_every": 3, "lr": 1.0e-3, "margin": 0.5}


def train(dump, exp, *args):
    return forkserver.run("upmp.bin.train", "--config", str(dump / "conf.yaml"),
                           "--train_scp", str(dump / "dump" / "layers.scp"), "--utt2spk", str(dump / "utt2spk"),
                           "--exp_dir", str(exp), *map(str, args))


def test_lmft_config_places_its_keys_and_checks_them():
    cfg = check_train_config(dict(TRAIN_CONFIG, lmft_conf=LMFT))
    phase = lmft_config(cfg)
    assert (phase.train_conf.steps, phase.train_conf.crop_seconds, phase.train_conf.valid_every,
            phase.optim_conf.lr, phase.loss_conf.margin) == (6, 0.8, 3, 1.0e-3, 0.5)
    assert phase.loss_conf.scale == 30 and phase.train_conf.batch_size == 4  # the rest kept
    assert cfg.loss_conf.margin == 0.2  # the base config untouched
    defaults = check_train_config(dict(TRAIN_CONFIG)).lmft_conf  # WeSpeaker / LAP follow-up values
    assert (defaults.steps, defaults.crop_seconds, defaults.lr, defaults.margin) == (2000, 6.0, 1e-4, 0.5)
    with pytest.raises(ConfigError, match="unknown config key 'lmft_conf.margn'"):
        check_train_config(dict(TRAIN_CONFIG, lmft_conf={"margn": 0.5}))
    with pytest.raises(ConfigError, match="lmft_conf.lr: 0 is not allowed"):
        check_train_config(dict(TRAIN_CONFIG, lmft_conf={"lr": 0}))


def test_lmft_starts_from_the_selected_base_model(dump):
    utts = [f"s{s}-u{u}" for s in range(3) for u in range(3)]
    trials = [(a, b, a[:2] == b[:2]) for i, a in enumerate(utts) for b in utts[i + 1:]]
    (dump / "valid_trials").write_text("".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for a, b, t in trials))
    (dump / "conf.yaml").write_text(yaml.safe_dump(dict(TRAIN_CONFIG, lmft_conf=LMFT)))
    valid = ("--valid_scp", dump / "dump/layers.scp", "--valid_trials", dump / "valid_trials")
    r = train(dump, dump / "base", "--train_conf.valid_every", "4", *valid)
    assert r.returncode == 0, r.stderr
    base = torch.load(dump / "base/model.pt", weights_only=True)
    assert base["head"] and base["step"] in (4, 8, 12)

    # lr 1e-30: Adam moves each weight by about 1e-30, so the parameters at the end are those at step 0:
    # the base model's (a fresh initialisation differs by O(0.1))
    r = train(dump, dump / "frozen", "--lmft_from", dump / "base/model.pt", "--lmft_conf.lr", "1e-30", *valid)
    assert r.returncode == 0, r.stderr
    frozen = torch.load(dump / "frozen/model.pt", weights_only=True)
    from upmp.checkpoint import load_model
    params = {n for n, _ in load_model(str(dump / "base/model.pt"))[0].named_parameters()}
    assert params
    for n in params:
        torch.testing.assert_close(frozen["model"][n], base["model"][n], atol=1e-20, rtol=0)
    for k in base["head"]:
        torch.testing.assert_close(frozen["head"][k], base["head"][k], atol=1e-20, rtol=0)
    assert "large-margin fine-tuning from" in (dump / "frozen/train.log").read_text()

    # the real phase: its own dir, its config (longer crops, larger margin, few steps), weights moved
    r = train(dump, dump / "base_lmft", "--lmft_from", dump / "base/model.pt", *valid)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((dump / "base_lmft/config.yaml").read_text())
    assert (cfg["train_conf"]["steps"], cfg["train_conf"]["crop_seconds"], cfg["loss_conf"]["margin"],
            cfg["optim_conf"]["lr"]) == (6, 0.8, 0.5, 1.0e-3)
    assert "cached crops of 40 frames" in (dump / "base_lmft/train.log").read_text()  # 0.8 s / 0.02 s
    tuned = torch.load(dump / "base_lmft/model.pt", weights_only=True)
    assert tuned["inputs"]["lmft_from"] == str(dump / "base/model.pt")
    assert any(not torch.equal(tuned["model"][n], base["model"][n]) for n in params)
    assert (dump / "base_lmft/valid_metrics.tsv").read_text().splitlines()[1:] != []


def test_lmft_errors(dump):
    (dump / "conf.yaml").write_text(yaml.safe_dump(dict(TRAIN_CONFIG, lmft_conf=LMFT)))
    r = train(dump, dump / "x", "--lmft_from", dump / "missing.pt")
    assert r.returncode == 1 and "missing.pt: base model for large-margin fine-tuning not found" in r.stderr
    assert "Traceback" not in r.stderr
    r = train(dump, dump / "base", "--train_conf.steps", "4")
    assert r.returncode == 0, r.stderr
    # other speakers than the base model's (s2 renamed)
    lines = (dump / "utt2spk").read_text().splitlines()
    (dump / "utt2spk").write_text("\n".join(l.replace(" s2", " s9") for l in lines) + "\n")
    r = train(dump, dump / "y", "--lmft_from", dump / "base/model.pt")
    assert r.returncode == 1 and "trained on other speakers (3) than this training set's (3)" in r.stderr
    (dump / "utt2spk").write_text("\n".join(lines) + "\n")
    r = train(dump, dump / "z", "--lmft_from", dump / "base/model.pt", "--backend_conf.conv_dim", "6")
    assert r.returncode == 1 and "weights do not fit this config's backend" in r.stderr
    r = train(dump, dump / "w", "--lmft_from", dump / "base/model.pt", "--lmft_conf.steps", "0")
    assert r.returncode == 1 and "lmft_conf.steps: 0 is not allowed" in r.stderr
