from dataclasses import asdict

import pytest

from upmp.config import ConfigError, parse_overrides
from upmp.train.schema import resolve_train_config


@pytest.fixture
def conf(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 0\nbackend_conf:\n  conv_dim: 32\n  heads: 4\noptim_conf:\n  lr: 0.003\n")
    return p


def test_overrides_are_typed(conf):
    """Overrides are parsed as YAML (1e-3 a float, `-` as `_`) and may set keys the YAML leaves out."""
    cfg = resolve_train_config(str(conf), ["--backend_conf.conv_dim", "64", "--optim-conf.lr=1e-3", "--seed", "3",
                                           "--train_conf.steps", "7"])
    assert (cfg.seed, cfg.backend_conf.conv_dim, cfg.backend_conf.heads, cfg.optim_conf.lr, cfg.train_conf.steps) == \
        (3, 64, 4, 1e-3, 7)
    assert isinstance(cfg.optim_conf.lr, float) and parse_overrides(["--a-b.c=[1, 2]"]) == [("a_b.c", [1, 2])]


def test_unknown_key_is_an_error(conf):
    with pytest.raises(ConfigError, match=r"unknown config key 'backend_conf.conv_dims'; known keys here: conv_dim, "
                                          r"dropout, embed_dim, heads, n_blocks, pooling, residual"):
        resolve_train_config(str(conf), ["--backend_conf.conv_dims", "64"])
    with pytest.raises(ConfigError, match=r"unknown config key 'sead'"):
        resolve_train_config(str(conf), ["--sead", "1"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--seed"])
    with pytest.raises(ConfigError, match="expected --key value"):
        parse_overrides(["seed", "1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_train_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        resolve_train_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- seed\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        resolve_train_config(str(tmp_path / "list.yaml"))


def test_duplicate_key_is_refused_through_train(tmp_path):
    """A recipe YAML that gives a key twice (two train_conf: blocks after a copy-paste) would keep
    the second silently: upmp.bin.train refuses it in one line naming the file, line and key, and
    writes no experiment dir."""
    from helpers import one_line_error, run_module
    conf = tmp_path / "train.yaml"
    conf.write_text("backend: upmp\ntrain_conf:\n  steps: 600\nbackend_conf:\n  conv_dim: 8\n"
                    "train_conf:\n  steps: 5\n")
    r = run_module("upmp.bin.train", "--config", str(conf), "--exp_dir", str(tmp_path / "exp"))
    line = one_line_error(r)
    assert str(conf) in line and "line 6: key 'train_conf' is given twice (first on line 2)" in line, line
    assert not (tmp_path / "exp").exists()


# the training config schema (upmp/train/schema.py)

@pytest.fixture
def train_yaml(tmp_path):
    p = tmp_path / "train.yaml"
    p.write_text("backend: upmp\ntrain_conf:\n  steps: 600\n  crop_seconds: 2.0\n")
    return p


def test_schema_fills_defaults_and_checks_types(train_yaml):
    from upmp.train.schema import resolve_train_config
    cfg = resolve_train_config(str(train_yaml), ["--train_conf.batch_size", "64", "--optim_conf.lr", "1e-3"])
    assert cfg.train_conf.steps == 600 and cfg.train_conf.batch_size == 64
    assert asdict(cfg.optim_conf) == {"lr": 1e-3, "upstream_lr": 5e-5, "weight_decay": 0.0, "pct_start": 0.1, "grad_clip": 5.0}
    assert asdict(cfg.backend_conf) == {"conv_dim": 128, "n_blocks": 1, "heads": 4, "embed_dim": 192, "dropout": 0.1,
                                   "residual": "once", "pooling": "masked"}
    assert asdict(cfg.loss_conf) == {"margin": 0.2, "scale": 30.0, "heads": 1, "margin_schedule": {
        "shape": "none", "start_step": 0, "end_step": 0, "start_margin": 0.0}} and cfg.use_hidden0 is False
    scheduled = resolve_train_config(str(train_yaml), ["--loss_conf.margin_schedule.shape", "exp",
                                                       "--loss_conf.margin_schedule.end_step", "300"])
    assert scheduled.loss_conf.margin_schedule.shape == "exp"
    assert (cfg.train_conf.keep_checkpoints, cfg.train_conf.average, cfg.train_conf.trainable,
            cfg.train_conf.init) == (0, None, [], "")
    assert resolve_train_config(str(train_yaml), ["--train_conf.crop_seconds", "3"]).train_conf.crop_seconds == 3.0
    lap = resolve_train_config(str(train_yaml), ["--backend", "lap"])
    assert asdict(lap.backend_conf) == {"heads": 16, "channels": 512, "embed_dim": 192, "dropout": 0.1, "variant": "masked"}
    aug = resolve_train_config(str(train_yaml), ["--train_conf.augment.rirs_root", "/r"]).train_conf.augment
    assert aug.rirs_root == "/r" and aug.prob == 0.6 and aug.rir_sets == ["simulated_rirs"]


@pytest.mark.parametrize("args, text, message", [
    (["--train_conf.batch_size", "abc"], "", "train_conf.batch_size: 'abc' is not allowed: expected an integer >= 1"),
    ([], "  log_every: '50'\n", "train_conf.log_every: '50' is not allowed: expected an integer >= 1"),
    ([], "optim_conf:\n  lr: [0.1]\n", "optim_conf.lr: [0.1] is not allowed: expected a number > 0"),
    (["--train_conf.crop_seconds", "-1"], "", "train_conf.crop_seconds: -1 is not allowed: expected a number > 0"),
    (["--train_conf.batch_size", "4.5"], "", "train_conf.batch_size: 4.5 is not allowed: expected an integer >= 1"),
    (["--train_conf.preload", "maybe"], "", "train_conf.preload: 'maybe' is not allowed: expected true or false"),
    (["--backend_conf.convdim", "8"], "", "unknown config key 'backend_conf.convdim'; known keys here: conv_dim, "
                                          "dropout, embed_dim, heads, n_blocks"),
    (["--train_conf.steps", "10"], "", "train_conf.steps 10 with optim_conf.pct_start 0.1 gives exactly 1 warm-up step"),
    ([], "  stpes: 5\n", "unknown config key 'train_conf.stpes'"),
    (["--train_conf.sampling", "balanced"], "", "expected one of uniform, speaker_balanced"),
    (["--train_conf.device", "gpu"], "", "train_conf.device: 'gpu' is not allowed"),
    (["--train_conf.augment.prob", "2"], "", "train_conf.augment.prob: 2 is not allowed: expected a number in [0, 1]"),
    (["--train_conf.augment.kinds", "{noise: -1}"], "", "augment.kinds: expected weights >= 0"),
])
def test_schema_refuses_bad_values(train_yaml, args, text, message):
    from upmp.train.schema import resolve_train_config
    train_yaml.write_text(train_yaml.read_text() + text)
    with pytest.raises(ConfigError) as e:
        resolve_train_config(str(train_yaml), args)
    assert str(e.value).startswith(f"{train_yaml}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_schema_steps_that_onecycle_can_schedule():
    """The one (steps, pct_start) the schema refuses is the one OneCycle cannot schedule."""
    import torch
    from upmp.train.schema import check_train_config
    for steps, refused in ((10, True), (11, False), (4, False), (12, False)):
        cfg = {"train_conf": {"steps": steps}}
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        try:
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[3e-3], total_steps=steps, pct_start=0.1)
            for _ in range(steps):
                opt.step()
                sched.step()
            crashed = False
        except ZeroDivisionError:
            crashed = True
        assert crashed == refused
        if refused:
            with pytest.raises(ConfigError, match="warm-up"):
                check_train_config(cfg)
        else:
            check_train_config(cfg)


# backend_conf: the keys and defaults are the backend constructors' (upmp.backends.BACKENDS)

def test_backend_confs_are_the_registry_constructors_keyword_arguments():
    """Every registered backend is a choice, and its conf has exactly its constructor's keyword
    arguments and defaults (a constructor argument the schema does not know fails here, and the
    schema refuses to import)."""
    import dataclasses
    import inspect

    from upmp.backends import BACKENDS
    from upmp.train.schema import BACKEND_CONFS, TrainConfig
    assert set(BACKENDS) == set(BACKEND_CONFS)
    assert set(dataclasses.fields(TrainConfig)[3].metadata["choices"]) == set(BACKENDS)
    for name, cls in BACKENDS.items():
        params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # after self, input_dim, num_layers
        assert {f.name: f.default for f in dataclasses.fields(BACKEND_CONFS[name])} == \
            {p.name: p.default for p in params}, name


def test_backend_conf_takes_the_constructor_defaults_and_refuses_a_drift():
    import dataclasses

    from upmp.backends.upmp import UPMPBackend
    from upmp.train.schema import UPMPConf, backend_conf, spec

    def bare(conf):  # UPMPConf's keys, types and ranges, without defaults
        fields = dataclasses.fields(conf)
        return type("Conf", (), {"__annotations__": {f.name: f.type for f in fields},
                                 **{f.name: spec(**f.metadata) for f in fields}})

    class Narrow(UPMPBackend):
        def __init__(self, input_dim, num_layers, conv_dim=64, n_blocks=1, heads=4, embed_dim=192, dropout=0.1,
                     residual="once", pooling="masked"):
            super().__init__(input_dim, num_layers, conv_dim, n_blocks, heads, embed_dim, dropout, residual, pooling)

    class Grown(Narrow):
        def __init__(self, input_dim, num_layers, conv_dim=64, n_blocks=1, heads=4, embed_dim=192, dropout=0.1,
                     residual="once", pooling="masked", gate=False):
            super().__init__(input_dim, num_layers, conv_dim, n_blocks, heads, embed_dim, dropout, residual, pooling)

    conf = backend_conf("narrow", Narrow)(bare(UPMPConf))
    assert conf().conv_dim == 64 and conf().embed_dim == 192  # the constructor's default, not a copy
    assert dataclasses.fields(conf)[0].metadata["lo"] == 1  # the schema's range kept
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf().heads = 2
    with pytest.raises(TypeError, match=r"backend 'grown': Grown's keyword arguments .*'gate'.* and schema Conf's "
                                        r"keys .* differ"):
        backend_conf("grown", Grown)(bare(UPMPConf))
