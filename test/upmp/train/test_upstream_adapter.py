"""Online training with a LoRA adapter on the tiny WavLM (train_conf.upstream_adapter): only the
adapter and the backend train (the upstream's weights bit-equal after the steps, not in the
optimizer), model.pt keeps the adapter only, a resumed run and large-margin fine-tuning load it
back, and stage 3 and the package use the adapted upstream (the adapter merged into the weights)."""
import logging
from dataclasses import asdict

import kaldiio
import numpy as np
import pytest
import torch

from helpers import TRAIN_CONFIG
from upmp.errors import ModelFileError

RANK, D, LAYERS = 4, 32, 2  # the tiny_wavlm fixture: dim 32, 2 Transformer layers


def test_lora_trains_only_the_adapter_and_extraction_uses_it(small_data_dir, tiny_wavlm, tmp_path, monkeypatch, caplog):
    import upmp.train.trainer as trainer
    from upmp.bin import extract_embeddings
    from upmp.checkpoint import load_model, load_upstream
    from upmp.data.kaldi_dir import DataDir
    from upmp.embeddings import embed_stacks
    from upmp.upstream.source import UpstreamStacks
    from upmp.inference import SpeakerModel
    from upmp.inference.package import collect_experiment, read_package, write_package
    from upmp.train.inputs import Inputs
    from upmp.train.schema import check_train_config
    from upmp.upstream.adapter import adapter_state

    cfg = check_train_config(dict(TRAIN_CONFIG, optim_conf={"upstream_lr": 0.05}, train_conf=dict(
        TRAIN_CONFIG["train_conf"], steps=3, crop_seconds=0.5, log_every=1, ckpt_every=3,
        upstream_adapter={"rank": RANK, "alpha": 8})))
    inputs = Inputs(train_data_dir=str(small_data_dir), upstream="wavlm_local", upstream_ckpt=str(tiny_wavlm))
    runs = []

    def build_run(*args):  # the trainer's own run, kept to look at after training
        run = real_build_run(*args)
        runs.append((run, adapter_state(run.upstream) if run.upstream is not None else None))
        return run
    real_build_run = trainer.build_run
    monkeypatch.setattr(trainer, "build_run", build_run)
    exp = tmp_path / "exp"
    caplog.set_level(logging.INFO, logger="upmp.train.inputs")
    trainer.train(cfg, inputs, str(exp))
    (run, initial), = runs
    upstream = run.upstream

    # only the adapter and the backend are optimised; the upstream's own weights did not move
    optimised = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    lora = {k: p for k, p in upstream.named_parameters() if p.requires_grad}
    assert len(lora) == 2 * 2 * LAYERS and all(k.endswith((".lora_A", ".lora_B")) for k in lora)
    assert sum(p.numel() for p in lora.values()) == 2 * RANK * D * 2 * LAYERS  # 2 r d per projection
    assert optimised == {id(p) for p in [*run.model.parameters(), *run.head.parameters(), *lora.values()]}
    fresh = load_upstream("wavlm_local", str(tiny_wavlm), "cpu").state_dict()
    after = {k.replace(".parametrizations.weight.original", ".weight"): v for k, v in upstream.state_dict().items()
             if not k.endswith((".lora_A", ".lora_B"))}
    assert after.keys() == fresh.keys() and all(torch.equal(after[k], fresh[k]) for k in fresh)
    final = adapter_state(upstream)
    assert all(not torch.equal(final[k], initial[k]) for k in final)  # A and B both trained
    assert "upstream adapter: LoRA rank 4, alpha 8 on 4 linear modules (q_proj, v_proj): 1,024 trainable " \
        "parameters; the upstream's" in caplog.text

    # model.pt and last.pt keep the adapter only; a resumed run loads it back
    saved = torch.load(exp / "model.pt", weights_only=True)["upstream"]
    assert saved["adapter"] == asdict(cfg.train_conf.upstream_adapter) and saved["name"] == "wavlm_local"
    assert saved["state"].keys() == final.keys() and all(torch.equal(saved["state"][k], final[k]) for k in final)
    last = torch.load(exp / "checkpoints/last.pt", weights_only=True)["upstream"]
    assert last.keys() == final.keys()
    (exp / "model.pt").unlink()
    trainer.train(cfg, inputs, str(exp))  # resumes at the last step: loads the checkpoint, writes model.pt
    assert torch.equal(runs[1][0].upstream.state_dict()[next(iter(final))], final[next(iter(final))])
    resaved = torch.load(exp / "model.pt", weights_only=True)["upstream"]["state"]
    assert all(torch.equal(resaved[k], final[k]) for k in final)

    # stage 3 embeds with the adapted upstream: the adapter merged equals base + adapter path
    out = exp / "embeddings" / "data"
    extract_embeddings.main(["--model", str(exp / "model.pt"), "--data_dir", str(small_data_dir),
                             "--out_dir", str(out), "--num_threads", "1"])
    data = DataDir.load(small_data_dir)
    got = dict(kaldiio.load_scp(str(out / "xvector.scp")))
    got = np.stack([got[u] for u in data.utts])
    model, _ = load_model(str(exp / "model.pt"))
    upstream.eval()  # the trained, unmerged upstream: W x + (alpha / r) B A x
    adapted = embed_stacks(model, list(UpstreamStacks(upstream, small_data_dir, "wavlm_local").stacks(data.utts)))
    plain = embed_stacks(model, list(UpstreamStacks(load_upstream("wavlm_local", str(tiny_wavlm), "cpu"),
                                                    small_data_dir, "wavlm_local").stacks(data.utts)))
    np.testing.assert_allclose(got, adapted, atol=1e-4, rtol=1e-4)
    assert np.abs(got - plain).max() > 1e-3

    # the package carries the merged weights (upstream.pt, no adapter tensors) and embeds the same
    package = write_package(collect_experiment(str(exp), load_checkpoint=lambda p: load_model(p)), str(tmp_path / "pkg"))
    merged = torch.load(package / "upstream.pt", weights_only=True)
    assert merged.keys() == fresh.keys()
    assert "LoRA adapter, rank 4 alpha 8 on q_proj, v_proj, merged" in (package / "README.md").read_text()
    packaged = SpeakerModel(read_package(str(package)))
    wavs = [packaged.waveform(data.wav_scp[u]) for u in data.utts[:3]]
    np.testing.assert_allclose(packaged.embed_raw(wavs), got[:3], atol=1e-4, rtol=1e-4)

    # large-margin fine-tuning starts from the base model's adapter (not a fresh one, B = 0)
    from dataclasses import replace
    from upmp.train.lmft import lmft_config
    phase = lmft_config(replace(cfg, lmft_conf=replace(cfg.lmft_conf, steps=2, crop_seconds=0.5)))
    # the adapter then stays where the base model left it
    phase = replace(phase, optim_conf=replace(phase.optim_conf, upstream_lr=1e-30))
    trainer.train(phase, replace(inputs, lmft_from=str(exp / "model.pt")), str(tmp_path / "lmft"))
    after_lmft = adapter_state(runs[-1][0].upstream)
    assert all(torch.allclose(after_lmft[k], final[k], atol=1e-6) for k in final)
    frozen = replace(phase, train_conf=replace(phase.train_conf, upstream_adapter=None))
    with pytest.raises(ModelFileError, match="was trained by a LoRA adapter .* must train it the same way"):
        trainer.train(frozen, replace(inputs, lmft_from=str(exp / "model.pt")), str(tmp_path / "lmft_frozen"))
