"""Where training data come from: cached layer stacks (stage 1) or audio run through the upstream
inside the training loop (online mode). `build_training_data` turns the command-line inputs and
the resolved config into the batch source (crops) and the training set's layer-stack source
(upmp.upstream.source: its meta, and online its upstream; validation takes the same kind)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from upmp.data.audio import SAMPLE_RATE
from upmp.errors import ConfigError, DataDirError
from upmp.train.data import LayerStackCrops, WaveformCrops
from upmp.train.schema import TrainConfig, UpstreamAdapterConf
from upmp.data.layer_stacks import LayerStackMeta, layers_text, parse_layers
from upmp.upstream.source import CachedStacks, LayerStackSource, UpstreamStacks

logger = logging.getLogger(__name__)


@dataclass
class Inputs:
    """Where training and validation data come from (cached stacks or online audio)."""
    train_scp: Optional[str] = None      # cached: layers.scp of the training set
    utt2spk: Optional[str] = None        # cached: its utt2spk
    valid_scp: Optional[str] = None      # cached: layers.scp of the validation set
    train_data_dir: Optional[str] = None  # online: Kaldi data dir of the training set
    valid_data_dir: Optional[str] = None  # online: Kaldi data dir of the validation set
    valid_trials: Optional[str] = None   # Kaldi trials of the validation set (either mode)
    upstream: Optional[str] = None       # online: upstream name (see upmp.upstream.build_upstream)
    upstream_ckpt: Optional[str] = None
    lmft_from: Optional[str] = None      # large-margin fine-tuning: the base model.pt to start from

    @property
    def online(self) -> bool:
        return self.train_data_dir is not None

    def check(self) -> None:
        if self.online == (self.train_scp is not None):
            raise ConfigError("give either cached inputs (--train_scp, --utt2spk) or online ones "
                              "(--train_data_dir, --upstream)")
        if self.online and not self.upstream:
            raise ConfigError("online training (--train_data_dir) needs --upstream")
        if not self.online and not self.utt2spk:
            raise ConfigError("--train_scp needs --utt2spk")
        valid_src = self.valid_data_dir if self.online else self.valid_scp
        other = self.valid_scp if self.online else self.valid_data_dir
        if other:
            raise ConfigError("validation data must come in the training mode's form "
                              f"({'--valid_data_dir' if self.online else '--valid_scp'})")
        if bool(valid_src) != bool(self.valid_trials):
            raise ConfigError(f"{'--valid_data_dir' if self.online else '--valid_scp'} and --valid_trials go together")
        for option in ("train_scp", "utt2spk", "valid_scp", "valid_trials", "upstream_ckpt"):
            path = getattr(self, option)
            if path is not None and not Path(path).is_file():
                raise DataDirError(f"--{option} {path}: file not found")
        for option in ("train_data_dir", "valid_data_dir"):
            path = getattr(self, option)
            if path is not None and not Path(path).is_dir():
                raise DataDirError(f"--{option} {path}: directory not found")

    def recorded(self) -> Dict[str, str]:
        """The inputs given, as model.pt and train_summary.json record them."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class TrainingData:
    data: Any                      # LayerStackCrops or WaveformCrops: batch(step, rank, world)
    source: LayerStackSource       # the training set's stacks: CachedStacks, or UpstreamStacks (online)
    description: str               # for the log

    @property
    def meta(self) -> LayerStackMeta:
        """The layer stacks the backend sees."""
        return self.source.meta

    @property
    def upstream(self) -> Optional[Any]:
        """Online: the upstream the training loop runs on the crops (trainable when fine-tuned), else None."""
        return getattr(self.source, "upstream", None)


def build_training_data(cfg: TrainConfig, inputs: Inputs, device) -> TrainingData:
    tc = cfg.train_conf
    if tc.upstream_adapter is not None and tc.finetune_upstream:
        raise ConfigError("train_conf.upstream_adapter and train_conf.finetune_upstream: choose one (the adapter "
                          "trains beside the frozen upstream; finetune_upstream trains all of its weights)")
    if inputs.online:
        augment = None
        if tc.augment:  # before the upstream: a bad root fails fast
            from upmp.data.augment import Augmenter
            augment = Augmenter(tc.augment)
        from upmp.upstream import build_upstream
        upstream = build_upstream(inputs.upstream, inputs.upstream_ckpt).to(device)
        upstream.set_trainable(bool(tc.finetune_upstream))
        upstream.keep_layers(parse_layers(cfg.layers, upstream.num_layers, option="layers"))
        if tc.upstream_adapter is not None:
            add_upstream_adapter(upstream, tc.upstream_adapter, inputs.upstream)
        source = UpstreamStacks(upstream, inputs.train_data_dir, inputs.upstream, device)
        data = WaveformCrops(inputs.train_data_dir, int(round(tc.crop_seconds * SAMPLE_RATE)), tc.batch_size,
                             cfg.seed, sampling=tc.sampling, preload=tc.preload, augment=augment)
        description = f"{tc.crop_seconds} s waveform crops, upstream {inputs.upstream}" + \
            (" with a LoRA adapter" if tc.upstream_adapter else " fine-tuned" if upstream.trainable else " frozen") + \
            (", augmented" if augment else "")
        return TrainingData(data, source, description)
    if tc.upstream_adapter is not None:
        raise ConfigError("train_conf.upstream_adapter needs online training (--train_data_dir; sv.sh --train_mode "
                          "online): with cached layer stacks there is no upstream in the training loop to adapt")
    if tc.finetune_upstream or tc.augment:
        raise ConfigError("train_conf.finetune_upstream and train_conf.augment need online training "
                          "(--train_data_dir): cached layer stacks are fixed")
    source = CachedStacks(inputs.train_scp)
    meta = source.meta
    wanted = parse_layers(cfg.layers, option="layers")
    if wanted is not None and wanted != meta.layers:  # "all": the stacks' own subset
        raise ConfigError(f"layers: {layers_text(wanted)}, but {inputs.train_scp} holds hidden states "
                          f"{layers_text(meta.layers)} (stage 1 --layers); extract those, or leave layers: all")
    crop_frames = int(round(tc.crop_seconds / meta.frame_shift))
    data = LayerStackCrops(inputs.train_scp, inputs.utt2spk, meta.num_layers, crop_frames, tc.batch_size,
                           cfg.seed, preload=tc.preload, sampling=tc.sampling,
                           spanout_prob=tc.spanout_prob, spanout_span=tc.spanout_span,
                           spanout_rate=tc.spanout_rate)
    return TrainingData(data, source, f"cached crops of {crop_frames} frames")


def add_upstream_adapter(upstream, adapter: UpstreamAdapterConf, name: str) -> None:
    """train_conf.upstream_adapter: LoRA on the frozen upstream (upmp.upstream.adapter); only the
    adapter and the backend train. Its parameter count goes to the log."""
    from upmp.upstream.adapter import adapters, add_adapter, describe
    conf = dataclasses.asdict(adapter)  # the plain form model.pt keeps (upmp.upstream.adapter)
    n_params = add_adapter(upstream, conf, f"upstream {name}")
    n_frozen = sum(p.numel() for p in upstream.parameters() if not p.requires_grad)
    logger.info(describe(conf, len(adapters(upstream)), n_params, n_frozen))
