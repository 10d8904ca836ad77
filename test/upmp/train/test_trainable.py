"""train_conf.trainable and train_conf.init: start from a trained model.pt's backend, train only the
parameters the glob patterns match (the rest bit-equal after training, batch-norm statistics included),
the count logged, and the one-line errors."""
import fnmatch
import logging

import pytest
import torch

import upmp.train.trainer as trainer
from helpers import TRAIN_CONFIG
from upmp.errors import ConfigError, ModelFileError
from upmp.train.schema import check_train_config

PATTERNS = ["backend.layer_pooling.*"]


def config(**train_conf):
    return check_train_config(dict(TRAIN_CONFIG, train_conf=dict(TRAIN_CONFIG["train_conf"], **train_conf)))


def train(dump, exp, cfg):
    inputs = trainer.Inputs(train_scp=str(dump / "dump/layers.scp"), utt2spk=str(dump / "utt2spk"))
    return trainer.train(cfg, inputs, str(exp))


def test_only_the_matched_parameters_train_from_the_init_model(dump, caplog):
    caplog.set_level(logging.INFO)
    train(dump, dump / "base", config(steps=6))
    base = torch.load(dump / "base/model.pt", weights_only=True)["model"]
    train(dump, dump / "adapted", config(init=str(dump / "base/model.pt"), trainable=PATTERNS))
    adapted = torch.load(dump / "adapted/model.pt", weights_only=True)["model"]
    matched = [k for k in base if fnmatch.fnmatchcase(k, PATTERNS[0])]
    assert matched and len(matched) < len(base)
    for k in base:
        if k in matched:
            if k.endswith(("weight", "running_mean")):
                assert not torch.equal(adapted[k], base[k]), k  # trained (statistics updated)
        else:
            assert torch.equal(adapted[k], base[k]), k  # frozen: weights and batch-norm statistics
    from upmp.data.layer_stacks import LayerStackMeta
    model = trainer.build_model(config(), LayerStackMeta(3, 8, 0.02, "test"))
    n = sum(p.numel() for name, p in model.named_parameters() if name.startswith("backend.layer_pooling."))
    total = sum(p.numel() for p in model.parameters())
    log = (dump / "adapted/train.log").read_text()  # the lines logged

    assert f"train_conf.trainable {PATTERNS}: {n} of {total} backend parameter values train" in log
    assert f"backend weights from {dump / 'base/model.pt'} (train_conf.init)" in log
    # the optimizer holds the trainable parameters and the loss head only
    state = torch.load(dump / "adapted/checkpoints/last.pt", weights_only=True)
    head = sum(v.numel() for v in state["head"].values())
    assert sum(s["exp_avg"].numel() for s in state["optimizer"]["state"].values()) == n + head


def test_trainable_and_init_errors_are_one_line(dump):
    with pytest.raises(ConfigError, match=r"train_conf.trainable: 'backend.layer_pool\.\*' matches no backend "
                                          r"parameter; the names start with backend\.") as e:
        train(dump, dump / "x", config(trainable=["backend.layer_pool.*"]))
    assert "\n" not in str(e.value) and not (dump / "x/config.yaml").exists()
    with pytest.raises(ConfigError, match="train_conf.trainable: .* expected a list of glob patterns"):
        config(trainable=[""])
    with pytest.raises(ModelFileError, match="missing.pt: not found"):
        train(dump, dump / "x", config(init=str(dump / "missing.pt")))
    train(dump, dump / "wide", check_train_config(dict(config(steps=2).to_dict(), backend_conf={"conv_dim": 6, "heads": 2,
                                                                                       "embed_dim": 8})))
    with pytest.raises(ConfigError, match=r"train_conf.init .*wide/model.pt: its backend does not fit this config's "
                                          r"\(backend\..* of shape .* and \d+ more\)") as e:
        train(dump, dump / "x", config(init=str(dump / "wide/model.pt")))
    assert "\n" not in str(e.value)
