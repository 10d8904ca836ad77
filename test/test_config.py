import pytest

from upmp.config import ConfigError, load_config, parse_overrides


@pytest.fixture
def conf(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 0\nbackend_conf:\n  conv_dim: 32\n  heads: 4\noptim_conf:\n  lr: 0.003\n")
    return p


def test_overrides_are_typed(conf):
    cfg = load_config(str(conf), ["--backend_conf.conv_dim", "64", "--optim-conf.lr=1e-3", "--seed", "3"])
    assert cfg == {"seed": 3, "backend_conf": {"conv_dim": 64, "heads": 4}, "optim_conf": {"lr": 1e-3}}


def test_unknown_key_is_an_error(conf):
    with pytest.raises(ConfigError, match=r"unknown config key 'backend_conf.conv_dims'.*known keys here: conv_dim, heads"):
        load_config(str(conf), ["--backend_conf.conv_dims", "64"])
    with pytest.raises(ConfigError, match=r"unknown config key 'sead'"):
        load_config(str(conf), ["--sead", "1"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--seed"])
    with pytest.raises(ConfigError, match="expected --key value"):
        parse_overrides(["seed", "1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(tmp_path / "bad.yaml"))
