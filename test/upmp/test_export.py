"""ONNX export (upmp/export.py, upmp.bin.export_onnx): onnxruntime equals torch on padded batches."""
import json

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from upmp.bin.common import run_main


def random_model(upstream: str, ckpt=None, dim=32, num_layers=3):
    """A SpeakerModel with a random-init UPMP backend over `upstream` (no training needed)."""
    from upmp.backends import SpeakerEmbeddingModel
    from upmp.inference import SpeakerModel
    cfg = {"backend": "upmp", "use_hidden0": True, "backend_conf": {"conv_dim": 4, "n_blocks": 1, "heads": 2, "embed_dim": 8}}
    torch.manual_seed(0)
    backend = SpeakerEmbeddingModel("upmp", dim, num_layers, True, cfg["backend_conf"]).eval()
    for m in backend.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    info = {"config": cfg, "layer_stack": {"num_layers": num_layers, "dim": dim, "frame_shift": 0.02, "upstream": upstream},
            "upstream": {"name": upstream}, "mean": [0.0] * 8, "calibration": None, "threshold": None,
            "experiment": "random", "upmp_version": "test"}
    content = {"info": info, "backend": backend.state_dict(), "upstream_state": None, "upstream_source": ckpt}
    return SpeakerModel(content), content


def hf_dir(kind, path):
    import transformers
    cfg_cls, model_cls = {"wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
                          "hubert": (transformers.HubertConfig, transformers.HubertModel),
                          "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model)}[kind]
    cfg = cfg_cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=8)
    torch.manual_seed(0)
    model_cls(cfg).save_pretrained(path)
    return path


def onnx_embed(path, wavs):
    from upmp.export import onnx_session, padded_waveforms
    x, lens = padded_waveforms(wavs)
    return onnx_session(str(path)).run(None, {"wavs": x, "wav_lens": lens})[0]


def test_ge2e_backend_and_waveform_graphs_equal_stage3(tiny_experiment, tmp_path):
    from upmp.bin.export_onnx import main
    from upmp.data.layout import pad_stacks
    from upmp.export import onnx_session
    from upmp.inference import load_model
    out = tmp_path / "model.onnx"
    run_main(main, ["--model", str(tiny_experiment / "exp/upmp"), "--out", str(out), "--num_threads", "1"])
    side = json.loads((tmp_path / "model.onnx.json").read_text())
    assert set(side["graphs"]) == {"backend", "full"} and all(g["max_abs_diff"] <= 1e-4 for g in side["graphs"].values())
    want = dict(kaldiio.load_scp(str(tiny_experiment / "exp/upmp/embeddings/data/xvector.scp")))
    info = json.loads((tiny_experiment / "exp/upmp/train_summary.json").read_text())
    assert info["inputs"]["upstream"] == "ge2e"
    utts = ["spk3-utt2", "spk0-utt0", "spk1-utt1", "spk2-utt0"]  # 1.9, 0.8, 1.2, 1.0 s: padded batches
    wavs = [soundfile.read(tiny_experiment / f"data/wav/{u}.wav", dtype="float32")[0] for u in utts]
    for batch in (slice(0, 4), slice(1, 2), slice(1, 4)):   # dynamic B and N
        got = onnx_embed(tmp_path / "model.wav.onnx", wavs[batch])
        np.testing.assert_allclose(got, np.stack([want[u] for u in utts[batch]]), atol=1e-4)
    model = load_model(str(tiny_experiment / "exp/upmp"))
    x, lens = pad_stacks([model.layer_stack(w) for w in wavs])
    got = onnx_session(str(out)).run(None, {"stack": x, "lengths": lens})[0]
    np.testing.assert_allclose(got, np.stack([want[u] for u in utts]), atol=1e-4)
    np.testing.assert_allclose(side["mean"], model.scorer.mean, atol=1e-12)


@pytest.mark.parametrize("kind", ["wavlm", "hubert", "wav2vec2"])
def test_hf_waveform_graph_equals_torch(kind, tmp_path, monkeypatch):
    from upmp.export import check_onnx, export_onnx
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = random_model(f"hf:{hf_dir(kind, tmp_path / kind)}")
    rng = np.random.default_rng(0)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (21000, 9000, 14500)]
    for graph in ("full", "backend"):
        export_onnx(model, str(tmp_path / f"{graph}.onnx"), graph)
        assert check_onnx(model, str(tmp_path / f"{graph}.onnx"), graph, wavs) <= 1e-4
    # the graph is not tied to the example's shapes: batch of one, another length
    one = onnx_embed(tmp_path / "full.onnx", wavs[1:2])
    np.testing.assert_allclose(one, model.embed_raw(wavs[1:2]), atol=1e-4)


def test_upstream_without_an_exportable_form(tiny_wavlm, tmp_path):
    from upmp.errors import ModelFileError
    from upmp.export import export_onnx
    model, _ = random_model("wavlm_local", str(tiny_wavlm))
    with pytest.raises(ModelFileError, match="no exportable form"):
        export_onnx(model, str(tmp_path / "x.onnx"), "full")
    export_onnx(model, str(tmp_path / "b.onnx"), "backend")  # the backend always exports
    assert (tmp_path / "b.onnx").stat().st_size > 0


def test_hf_package_is_self_contained(tmp_path, monkeypatch):
    """An hf:<dir> upstream is copied into the package: it loads after the original is gone."""
    import shutil
    from upmp.inference import load_model
    from upmp.inference.package import write_package
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = hf_dir("wavlm", tmp_path / "wavlm")
    model, content = random_model(f"hf:{src}", ckpt=src)
    content["info"].update(created="now", num_params=1, embed_dim=8, finetuned_upstream=False, train_set="x",
                           num_train_embeddings=1, step=1, scoring="cosine", results={}, format="upmp-model-package",
                           format_version=1)
    content["info"]["upstream"]["ckpt"] = "upstream/hf"
    wav = 0.1 * np.random.default_rng(0).standard_normal(12000).astype(np.float32)
    want = model.embed(wav)
    write_package(content, str(tmp_path / "pkg"))
    shutil.rmtree(src)
    assert (tmp_path / "pkg/upstream/hf/config.json").is_file()
    np.testing.assert_allclose(load_model(str(tmp_path / "pkg")).embed(wav), want, atol=1e-6)
