"""Reading YAML configs and command-line overrides; writing the resolved config.

    cfg = load_config_file("conf/train_upmp.yaml")                   # a mapping (duplicate keys refused)
    parse_overrides(["--train_conf.steps", "500", "--seed=3"])     # [("train_conf.steps", 500), ("seed", 3)]

An override is `--key value` or `--key=value`, dotted for nested keys (`-` and `_` are the same);
its value is parsed as YAML (`3e-3`, `true`, `[1, 2]`). Which keys exist is the schema's to say,
not the YAML's: upmp.train.schema.resolve_train_config puts the overrides over the YAML, so an
override may set a key the YAML leaves out, and refuses any key its schema does not know (a typo
never trains the wrong model).
"""
from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import yaml

from upmp.errors import ConfigError  # noqa: F401  (re-exported)
from upmp.fileio import atomic_write_text


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives one key twice: PyYAML would keep the last value without a word."""


def _construct_mapping(loader, node, deep=False):
    seen: Dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise DuplicateKeyError(f"line {line}: key {key!r} is given twice (first on line {seen[key]}); "
                                    "keep one (the second would silently win)")
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


def parse_overrides(argv: Sequence[str]) -> List[tuple]:
    """['--a.b', '1', '--c=x'] -> [('a.b', 1), ('c', 'x')]."""
    pairs, i = [], 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected --key value, got {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"option {arg} has no value")
            key, raw = arg[2:], argv[i + 1]
            i += 2
        try:
            value = yaml_load(raw)
        except yaml.YAMLError:
            value = raw
        pairs.append((key.replace("-", "_"), value))
    return pairs


def load_config_file(path: str) -> Dict[str, Any]:
    """The YAML mapping at path (ConfigError when missing, invalid or not a mapping)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return cfg


def versions() -> Dict[str, str]:
    """Versions of Python and the packages that shape results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("upmp", "torch", "torchaudio", "s3prl", "espnet", "kaldiio", "numpy", "scipy"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "unknown")
        except Exception:  # an optional package may be absent or fail to import
            out[name] = "not installed"
    return out


def dump_resolved(cfg: Dict[str, Any], exp_dir: str) -> None:
    """Write config.yaml (resolved) and versions.json into the experiment dir."""
    atomic_write_text(Path(exp_dir) / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    atomic_write_text(Path(exp_dir) / "versions.json", json.dumps(versions(), indent=2) + "\n")
