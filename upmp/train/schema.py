"""The training config: every key, its type, default and allowed range, in one place.

    cfg = resolve_train_config("conf/train_upmp.yaml", ["--train_conf.steps", "500"])

The defaults are the paper's VoxCeleb1 recipe for the UPMP backend (docs: "Reference training
recipe"), so a recipe YAML holds only what differs. Resolving merges the YAML and the
command-line overrides (`--key value`, dotted for nested keys, parsed as YAML) onto the
defaults, refuses a key the schema does not know (a typo never trains the wrong model), and
checks every value: a wrong one is a one-line ConfigError naming the key, the value and what is
allowed. The result is a frozen TrainConfig (one dataclass per section; `cfg.train_conf.steps`), what
the code reads; `cfg.to_dict()` is its plain form, written to the experiment's config.yaml and kept in
model.pt (files are read back as plain dicts: check_train_config turns one into a TrainConfig again).

backend_conf and loss_conf take the keys of the chosen backend / loss (BACKEND_CONFS, LOSS_CONFS).
A backend's keys and defaults are its constructor's keyword arguments (upmp.backends.BACKENDS): its
class here adds only types, ranges and choices, and refuses to exist when the two disagree; a backend
without an entry here gets the keys, defaults and types of its constructor.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, Optional, Sequence, get_type_hints

from upmp.config import load_config_file, parse_overrides
from upmp.errors import ConfigError


def spec(default=MISSING, lo=None, hi=None, lo_open=False, hi_open=False, choices=None, pattern=None):
    """A field with its allowed range (numbers), choices or pattern (strings); no default: a backend's
    (backend_conf) takes its constructor's."""
    meta = dict(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, choices=choices, pattern=pattern)
    if default is MISSING:
        return field(metadata=meta)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# the training batches' sampling (upmp.train.data.SpeakerSampler)
SAMPLING = ("uniform", "speaker_balanced")


# backend_conf, one per backend (upmp.backends.BACKENDS)

def constructor_defaults(cls) -> Dict[str, Any]:
    """A backend's conf keys and their defaults: its constructor's keyword arguments (input_dim and
    num_layers come from the layer stacks, not the config)."""
    return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in ("self", "input_dim", "num_layers") and p.default is not inspect.Parameter.empty}


def backend_conf(name: str, backend_cls: Optional[type] = None):
    """Class decorator: the frozen conf dataclass of backend `name`, its fields' defaults taken from
    the backend constructor (ESPnet's get_default_kwargs idea), so the two cannot drift: a key one of
    them has and the other lacks is a TypeError when the schema is imported."""
    def wrap(cls):
        if backend_cls is None:
            from upmp.backends import BACKENDS
            target = BACKENDS[name]
        else:
            target = backend_cls
        defaults, keys = constructor_defaults(target), list(cls.__annotations__)
        if sorted(defaults) != sorted(keys):
            raise TypeError(f"backend {name!r}: {target.__name__}'s keyword arguments {sorted(defaults)} and "
                            f"schema {cls.__name__}'s keys {sorted(keys)} differ; give them the same names")
        for key in keys:
            setattr(cls, key, field(default=defaults[key], metadata=getattr(cls, key).metadata))
        return dataclass(frozen=True)(cls)
    return wrap


@backend_conf("upmp")
class UPMPConf:
    conv_dim: int = spec(lo=1)               # c; the block width is 4c
    n_blocks: int = spec(lo=1)
    heads: int = spec(lo=1)                  # layer attentive pooling heads (4c must divide by it)
    embed_dim: int = spec(lo=1)
    dropout: float = spec(lo=0, hi=1, hi_open=True)
    residual: str = spec(choices=("once", "reference"))  # block residual x + f(x), or 2x + f(x) (authors' code)
    pooling: str = spec(choices=("masked", "authors"))  # authors: the UniPool code's context std (x.std() in eval)


@backend_conf("lap")
class LAPConf:
    heads: int = spec(lo=1)
    channels: int = spec(lo=1)
    embed_dim: int = spec(lo=1)
    dropout: float = spec(lo=0, hi=1, hi_open=True)
    variant: str = spec(choices=("masked", "authors"))  # authors: the LAP code's pooling and init


@backend_conf("ltdnn_d3net")
class LTDNND3NetConf:                         # L-TDNN D3Net (docs/method.md, "The revised paper")
    conv_dim: int = spec(lo=1)               # C (depth must divide it)
    n_blocks: int = spec(lo=1)               # SE-D2 blocks
    depth: int = spec(lo=1)                  # steps per block
    se_channels: int = spec(lo=1)            # squeeze-excitation width
    hidden: int = spec(lo=1)                 # layer attentive pooling width (heads must divide it)
    heads: int = spec(lo=1)
    embed_dim: int = spec(lo=1)
    dropout: float = spec(lo=0, hi=1, hi_open=True)
    eval_std: str = spec(choices=("unbiased", "biased"))  # frame pooling context std at test time


@backend_conf("ltdnn_ecapa")
class LTDNNEcapaConf:                         # L-TDNN ECAPA: three SE-Res2 blocks, dilations 2, 3, 4
    conv_dim: int = spec(lo=1)               # C (scale must divide it)
    scale: int = spec(lo=1)                  # Res2 groups
    se_channels: int = spec(lo=1)
    hidden: int = spec(lo=1)
    heads: int = spec(lo=1)
    embed_dim: int = spec(lo=1)
    dropout: float = spec(lo=0, hi=1, hi_open=True)
    eval_std: str = spec(choices=("unbiased", "biased"))


@backend_conf("mhfa")
class MHFAConf:
    compression_dim: int = spec(lo=1)        # c: keys and values compressed D -> c
    heads: int = spec(lo=1)                  # frame-attention heads (WeSpeaker / BUT Base recipe)
    embed_dim: int = spec(lo=1)


@backend_conf("superb_ecapa")
class SuperbEcapaConf:
    ndim: int = spec(lo=1)
    model_scale: int = spec(lo=1)
    output_size: int = spec(lo=1)
    embed_dim: int = spec(lo=1)


@backend_conf("xvector")
class XvectorConf:
    layer: int = spec()                      # hidden state used (negative: from the last)
    ndim: int = spec(lo=1)
    output_size: int = spec(lo=1)
    embed_dim: int = spec(lo=1)


BACKEND_CONFS: Dict[str, type] = {"upmp": UPMPConf, "lap": LAPConf, "mhfa": MHFAConf,
                                  "ltdnn_d3net": LTDNND3NetConf, "ltdnn_ecapa": LTDNNEcapaConf,
                                  "superb_ecapa": SuperbEcapaConf, "xvector": XvectorConf}


def _constructor_conf(name: str, cls) -> type:
    """A conf dataclass from a backend constructor's keyword defaults (types from the defaults)."""
    return dataclasses.make_dataclass(f"{name}_conf", [(k, type(v), spec(v)) for k, v in constructor_defaults(cls).items()],
                                      frozen=True)


def _registry_confs() -> None:
    """A registry backend without a class above gets its constructor's keys, defaults and types."""
    from upmp.backends import BACKENDS
    for name, cls in BACKENDS.items():
        if name not in BACKEND_CONFS:
            BACKEND_CONFS[name] = _constructor_conf(name, cls)


_registry_confs()


# loss_conf, one per loss (upmp.losses.LOSSES)

@dataclass(frozen=True)
class MarginScheduleConf:
    """loss_conf.margin_schedule (upmp.losses.scheduled_margin): the AAM margin ramps from start_margin
    at start_step to loss_conf.margin at end_step, a function of the step only (a resume repeats it)."""
    shape: str = spec("none", choices=("none", "linear", "exp", "cos"))  # none: loss_conf.margin throughout
    start_step: int = spec(0, lo=0)                        # start_margin up to this step
    end_step: int = spec(0, lo=0)                          # loss_conf.margin from this step on
    start_margin: float = spec(0.0, lo=0)


@dataclass(frozen=True)
class AAMSoftmaxConf:
    margin: float = spec(0.2, lo=0)
    margin_schedule: MarginScheduleConf = field(default_factory=MarginScheduleConf)
    scale: float = spec(30.0, lo=0, lo_open=True)
    heads: int = spec(1, lo=1)               # multi-head AAM-softmax: the embedding split into this many heads


@dataclass(frozen=True)
class SubcenterTopkConf(AAMSoftmaxConf):
    subcenters: int = spec(3, lo=1)
    topk: int = spec(5, lo=1)
    topk_margin: float = spec(0.06, lo=0)


LOSS_CONFS: Dict[str, type] = {"aamsoftmax": AAMSoftmaxConf, "aamsoftmax_subcenter_topk": SubcenterTopkConf}


@dataclass(frozen=True)
class AugmentConf:
    """train_conf.augment (online mode); values checked further by upmp.data.augment.check_conf."""
    musan_root: str = spec("")               # empty: noise, music and babble disabled
    rirs_root: str = spec("")                # empty: reverb disabled
    prob: float = spec(0.6, lo=0, hi=1)      # probability that an utterance is augmented at all
    kinds: dict = spec({"noise": 1, "music": 1, "babble": 1, "reverb": 1})  # relative weights
    snr: dict = spec({"noise": [0, 15], "music": [5, 15], "babble": [13, 20]})  # dB, drawn uniformly
    babble_speakers: list = spec([3, 7])     # speech files summed for babble (inclusive)
    rir_sets: list = spec(["simulated_rirs"])


@dataclass(frozen=True)
class AverageConf:
    """train_conf.average (upmp.train.averaging): model_avg.pt averages the weights (batch-norm running
    statistics included) of the last N checkpoints, or of the N with the best validation EER."""
    last: int = spec(0, lo=0)
    best: int = spec(0, lo=0)


@dataclass(frozen=True)
class UpstreamAdapterConf:
    """train_conf.upstream_adapter (online mode): a LoRA adapter on the upstream's linear projections,
    trained with the backend while the upstream's own weights stay frozen (upmp.upstream.adapter).
    Defaults: WeSpeaker's LoRA recipes on SSL models (rank 64, alpha 128 on attention q / v)."""
    kind: str = spec("lora", choices=("lora",))
    rank: int = spec(64, lo=1)                             # r
    alpha: float = spec(128.0, lo=0, lo_open=True)         # the update is (alpha / r) B A
    dropout: float = spec(0.0, lo=0, hi=1, hi_open=True)   # on the adapter path's input features
    target_modules: list = spec(["q_proj", "v_proj"])      # names (or name suffixes, globs) of nn.Linear modules


@dataclass(frozen=True)
class OptimConf:
    lr: float = spec(3.0e-3, lo=0, lo_open=True)           # OneCycle max lr
    upstream_lr: float = spec(5.0e-5, lo=0, lo_open=True)  # the upstream's (or its adapter's) max lr when trained
    weight_decay: float = spec(0.0, lo=0)
    pct_start: float = spec(0.1, lo=0, hi=1, lo_open=True, hi_open=True)  # warm-up fraction
    grad_clip: float = spec(5.0, lo=0, lo_open=True)       # gradient-norm clip


@dataclass(frozen=True)
class TrainConf:
    steps: int = spec(10000, lo=1)
    batch_size: int = spec(128, lo=1)                      # the global batch (all processes)
    crop_seconds: float = spec(3.0, lo=0, lo_open=True)    # shorter utterances wrap around
    sampling: str = spec("uniform", choices=SAMPLING)
    spanout_prob: float = spec(0.0, lo=0, hi=1)            # span-out (paper option: 0.3)
    spanout_span: int = spec(3, lo=1)                      # frames per span
    spanout_rate: float = spec(0.05, lo=0, hi=1)           # per-frame probability of starting a span
    log_every: int = spec(100, lo=1)
    ckpt_every: int = spec(1000, lo=1)
    valid_every: int = spec(1000, lo=0)                    # 0: no validation
    preload: bool = spec(False)                            # keep the training data in memory
    num_workers: int = spec(2, lo=0)                       # data-loader processes building batches
    num_threads: int = spec(0, lo=0)                       # 0: torch's default
    device: str = spec("cuda", pattern=r"cpu|cuda(:\d+)?")
    amp: str = spec("none", choices=("none", "bf16", "fp16"))  # autocast on the GPU
    sync_batchnorm: bool = spec(True)                      # torchrun: batch-norm over the global batch
    finetune_upstream: bool = spec(False)                  # online mode: train the upstream too
    augment: Optional[AugmentConf] = spec(None)            # online mode: MUSAN / RIR augmentation
    keep_checkpoints: int = spec(0, lo=0)                  # checkpoints/step_<N>.pt kept: the last K and best K
    average: Optional[AverageConf] = spec(None)            # model_avg.pt: mean of kept checkpoints' weights
    trainable: list = spec([])                             # glob patterns of backend parameters that train; []: all
    init: str = spec("")                                   # a model.pt whose backend weights start the training
    upstream_adapter: Optional[UpstreamAdapterConf] = spec(None)  # online mode: LoRA on the frozen upstream


@dataclass(frozen=True)
class LMFTConf:
    """Large-margin fine-tuning (upmp.train.lmft; sv.sh --lmft true): the phase's values, placed over
    train_conf.steps / crop_seconds / valid_every, optim_conf.lr and loss_conf.margin."""
    steps: int = spec(2000, lo=1)
    crop_seconds: float = spec(6.0, lo=0, lo_open=True)    # longer crops (WeSpeaker / LAP follow-up: 6 s)
    valid_every: int = spec(500, lo=0)
    lr: float = spec(1.0e-4, lo=0, lo_open=True)           # a short, low OneCycle (max lr)
    margin: float = spec(0.5, lo=0)                        # larger AAM margin


@dataclass(frozen=True)
class TrainConfig:
    seed: int = spec(0, lo=0)
    use_hidden0: bool = spec(False)          # the backend sees hidden state 0 (the CNN output)
    layers: str = spec("all")                # hidden states of the upstream: all, 0-12, 0,4,8,12, top:K:<tsv>
                                             # (upmp.data.layer_stacks.parse_layers); online mode selects them,
                                             # cached mode takes the stacks' (stage 1 --layers) and refuses others
    backend: str = spec("upmp", choices=tuple(BACKEND_CONFS))
    backend_conf: Any = spec({})             # the backend's entry in BACKEND_CONFS (a mapping in the YAML)
    loss: str = spec("aamsoftmax", choices=tuple(LOSS_CONFS))
    loss_conf: Any = spec({})                # the loss's entry in LOSS_CONFS (a mapping in the YAML)
    optim_conf: OptimConf = field(default_factory=OptimConf)
    train_conf: TrainConf = field(default_factory=TrainConf)
    lmft_conf: LMFTConf = field(default_factory=LMFTConf)

    def to_dict(self) -> Dict[str, Any]:
        """The plain form (every key, schema order): config.yaml and model.pt's "config"."""
        return dataclasses.asdict(self)


def backend_conf_class(name: str) -> type:
    return BACKEND_CONFS[name]


def _describe(typ, meta) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(meta["choices"])
    if meta.get("pattern"):
        return f"a string matching {meta['pattern']}"
    text = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping", list: "a list"}.get(typ, str(typ))
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        text += f" in {'(' if meta['lo_open'] else '['}{lo}, {hi}{')' if meta['hi_open'] else ']'}"
    elif lo is not None:
        text += f" {'>' if meta['lo_open'] else '>='} {lo}"
    return text


def _check_value(key: str, value, typ, meta):
    """The value, checked against type and range (ints accepted for floats, as floats)."""
    given = value
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, typ)
    if ok and meta.get("choices"):
        ok = value in meta["choices"]
    if ok and meta.get("pattern"):
        ok = re.fullmatch(meta["pattern"], value) is not None
    if ok and typ in (int, float):
        lo, hi = meta.get("lo"), meta.get("hi")
        ok = ((lo is None or (value > lo if meta["lo_open"] else value >= lo))
              and (hi is None or (value < hi if meta["hi_open"] else value <= hi)))
    if not ok:
        raise ConfigError(f"{key}: {given!r} is not allowed: expected {_describe(typ, meta)}")
    return value


def _resolve(cls: type, node, where: str) -> Dict[str, Any]:
    """A (partial) mapping -> every key of the dataclass, checked, defaults filled in."""
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {node!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in node if k not in names]
    if unknown:
        raise ConfigError(f"unknown config key {where + unknown[0]!r}; known keys here: {', '.join(sorted(names))}")
    hints = get_type_hints(cls)
    out: Dict[str, Any] = {}
    defaults = dataclasses.asdict(cls())
    for f in dataclasses.fields(cls):
        typ, key = hints[f.name], where + f.name
        typ = dict if typ is Any else typ  # backend_conf / loss_conf: a mapping, resolved by check_train_config
        value = node.get(f.name, defaults[f.name])
        inner = [a for a in getattr(typ, "__args__", ()) if a is not type(None)]
        if inner and dataclasses.is_dataclass(inner[0]):  # Optional[<conf>]: None or a mapping
            out[f.name] = None if value is None else _resolve(inner[0], value, key + ".")
        elif dataclasses.is_dataclass(typ):
            out[f.name] = _resolve(typ, node.get(f.name), key + ".")
        else:
            out[f.name] = _check_value(key, value, typ, f.metadata)
    return out


def _set(cfg: Dict[str, Any], key: str, value) -> None:
    """Put an override into the (partial) config, creating the mappings on its way."""
    node, parts = cfg, key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[:depth + 1])}: {node!r} has no keys (override {key})")
    node[parts[-1]] = value


def _build(cls: type, node: Dict[str, Any]):
    """A resolved mapping (_resolve's) -> the frozen dataclass instance, sections included."""
    hints, values = get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        typ, value = hints[f.name], node[f.name]
        inner = [a for a in getattr(typ, "__args__", ()) if a is not type(None)]
        if inner and dataclasses.is_dataclass(inner[0]):
            typ = inner[0]
        values[f.name] = _build(typ, value) if dataclasses.is_dataclass(typ) and value is not None else value
    return cls(**values)


def check_train_config(cfg: Dict[str, Any]) -> TrainConfig:
    """A (partial) config mapping (a YAML's, or a file's plain form) -> the full, checked TrainConfig."""
    out = _resolve(TrainConfig, cfg, "")
    out["backend_conf"] = _resolve(backend_conf_class(out["backend"]), cfg.get("backend_conf"), "backend_conf.")
    out["loss_conf"] = _resolve(LOSS_CONFS[out["loss"]], cfg.get("loss_conf"), "loss_conf.")
    tc, oc = out["train_conf"], out["optim_conf"]
    if math.isclose(oc["pct_start"] * tc["steps"], 1.0):
        # OneCycle's warm-up phase then ends at step 0 and its schedule divides by zero
        raise ConfigError(f"train_conf.steps {tc['steps']} with optim_conf.pct_start {oc['pct_start']} gives "
                          "exactly 1 warm-up step, which the OneCycle schedule cannot hold: change either "
                          f"(e.g. train_conf.steps {tc['steps'] + 1})")
    sched = out["loss_conf"]["margin_schedule"]
    if sched["shape"] != "none" and not sched["start_step"] < sched["end_step"] <= tc["steps"]:
        raise ConfigError(f"loss_conf.margin_schedule: the {sched['shape']} ramp from step {sched['start_step']} "
                          f"to step {sched['end_step']} must end after it starts and by train_conf.steps "
                          f"{tc['steps']}; set start_step < end_step <= {tc['steps']}")
    avg = tc["average"]
    if avg is not None and (avg["last"] > 0) == (avg["best"] > 0):
        raise ConfigError(f"train_conf.average: {avg}: give exactly one of last: N or best: N (N >= 1)")
    if tc["trainable"] and not all(isinstance(p, str) and p for p in tc["trainable"]):
        raise ConfigError(f"train_conf.trainable: {tc['trainable']!r}: expected a list of glob patterns of "
                          "backend parameter names (e.g. [backend.layer_pool.*])")
    typed = _build(TrainConfig, out)
    if typed.train_conf.augment is not None:
        from upmp.data.augment import check_conf
        check_conf(typed.train_conf.augment)
    return dataclasses.replace(typed,
                               backend_conf=_build(backend_conf_class(out["backend"]), out["backend_conf"]),
                               loss_conf=_build(LOSS_CONFS[out["loss"]], out["loss_conf"]))


def check_world_size(batch_size: int, world: int) -> None:
    """train_conf.batch_size is the global batch: each of the `world` processes takes an equal share."""
    if batch_size % world:
        raise ConfigError(f"train_conf.batch_size {batch_size} is the global batch: it must divide evenly over the "
                          f"{world} processes")


def resolve_train_config(path: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """The YAML at path with the command-line overrides, on the defaults, checked (see module doc)."""
    cfg = load_config_file(path)
    for key, value in parse_overrides(overrides):
        _set(cfg, key, value)
    try:
        return check_train_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def defaults() -> TrainConfig:
    """The full default config (the paper's VoxCeleb1 UPMP recipe)."""
    return check_train_config({})
