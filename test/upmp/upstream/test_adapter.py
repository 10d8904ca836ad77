"""LoRA adapters on the upstream (upmp/upstream/adapter.py): the parameter count against a hand
count, the merge identity W + (alpha / r) B A, that the adapter reaches WavLM's fused attention
(which reads q_proj.weight directly and bypasses a forward-wrapping LoRA), and the one-line errors."""
from dataclasses import asdict, replace

import pytest
import torch
from torch import nn

from upmp.errors import ConfigError
from upmp.upstream.adapter import LoRAWeight, adapter_state, adapters, add_adapter, merge_adapter

D, LAYERS = 32, 2  # the tiny_wavlm fixture: dim 32, 2 Transformer layers


def lora(rank=4, alpha=8.0, targets=("q_proj", "v_proj"), dropout=0.0):
    return {"kind": "lora", "rank": rank, "alpha": alpha, "dropout": dropout, "target_modules": list(targets)}


def randomise(upstream, seed=0):
    """Non-zero B (a trained adapter; B starts at zero, so a fresh adapter changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapters(upstream).values():
            a.lora_B.copy_(0.2 * torch.randn(a.lora_B.shape, generator=g))


@pytest.fixture(scope="module")
def wavs():
    g = torch.Generator().manual_seed(3)
    return 0.1 * torch.randn(2, 6000, generator=g), torch.tensor([6000, 6000])


def test_merge_identity_on_a_linear():
    torch.manual_seed(0)
    linear = nn.Linear(12, 7)
    W, b = linear.weight.detach().clone(), linear.bias.detach().clone()
    module = nn.Sequential(linear)
    n = add_adapter(module, lora(rank=3, alpha=6.0, targets=["0"]))
    assert n == 3 * (12 + 7)
    a = adapters(module)["0"]
    nn.init.normal_(a.lora_B)
    x = torch.randn(5, 12)
    by_hand = x @ W.T + b + 2.0 * (x @ a.lora_A.T) @ a.lora_B.T  # base path + (alpha / r) adapter path
    torch.testing.assert_close(linear(x), by_hand)
    torch.testing.assert_close(linear.weight, W + 2.0 * a.lora_B @ a.lora_A)
    merge_adapter(module)
    assert type(linear) is nn.Linear and set(dict(linear.named_parameters())) == {"weight", "bias"}
    torch.testing.assert_close(linear(x), by_hand)


def test_dropout_drops_input_features_in_training_only():
    torch.manual_seed(0)
    a = LoRAWeight(torch.zeros(6, 40), rank=2, alpha=2.0, dropout=0.5)
    nn.init.normal_(a.lora_B)
    full = a.lora_B @ a.lora_A
    torch.testing.assert_close(a.eval()(torch.zeros(6, 40)), full)
    dropped = a.train()(torch.zeros(6, 40))
    kept = (dropped != 0).any(dim=0)
    assert 0 < kept.sum() < 40  # whole input columns dropped, the rest scaled by 1 / (1 - p)
    torch.testing.assert_close(dropped[:, kept], 2 * full[:, kept])


def test_s3prl_wavlm_parameter_count_fused_attention_and_merge(tiny_wavlm, wavs):
    from upmp.upstream import build_upstream
    upstream = build_upstream("wavlm_local", str(tiny_wavlm))
    base_names = set(dict(upstream.named_parameters()))
    with torch.no_grad():
        plain = upstream(*wavs)[0]
    rank = 4
    n = add_adapter(upstream, lora(rank=rank))
    assert n == 2 * rank * D * LAYERS * 2  # 2 r d per d x d projection, 2 layers, q and v
    assert sorted(k.rsplit(".", 1)[-1] for k in adapters(upstream)) == sorted(["q_proj", "v_proj"] * LAYERS)
    trainable = {k for k, p in upstream.named_parameters() if p.requires_grad}
    assert trainable and all(k.endswith((".lora_A", ".lora_B")) for k in trainable)
    assert upstream.trainable and len(adapter_state(upstream)) == 2 * 2 * LAYERS
    randomise(upstream)
    upstream.eval()
    adapted = upstream(*wavs)[0]
    # WavLM's attention hands q_proj.weight to F.multi_head_attention_forward: the adapter must reach it
    assert (adapted - plain).abs().max() > 1e-3
    adapted.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for k, p in upstream.named_parameters() if k in trainable)
    merge_adapter(upstream)
    assert set(dict(upstream.named_parameters())) == base_names  # a plain upstream again
    with torch.no_grad():
        torch.testing.assert_close(upstream(*wavs)[0], adapted.detach(), atol=1e-5, rtol=1e-5)


def test_hf_wavlm_adapter_reaches_the_fused_attention(tmp_path, wavs, monkeypatch):
    import transformers
    from upmp.upstream import build_upstream
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = transformers.WavLMConfig(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                                   conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    torch.manual_seed(1)
    transformers.WavLMModel(cfg).save_pretrained(tmp_path / "hf")
    upstream = build_upstream(f"hf:{tmp_path / 'hf'}")
    with torch.no_grad():
        plain = upstream(*wavs)[0]
    assert add_adapter(upstream, lora(rank=2, targets=["attention.v_proj"])) == 2 * 2 * D * LAYERS
    randomise(upstream, seed=1)
    upstream.eval()
    with torch.no_grad():
        adapted = upstream(*wavs)[0]
        assert (adapted - plain).abs().max() > 1e-3
        merge_adapter(upstream)
        torch.testing.assert_close(upstream(*wavs)[0], adapted, atol=1e-5, rtol=1e-5)


def test_a_target_matching_nothing_is_one_line():
    module = nn.Sequential()
    module.add_module("q_proj", nn.Linear(4, 4))
    module.add_module("fc1", nn.Linear(4, 4))
    with pytest.raises(ConfigError) as e:
        add_adapter(module, lora(targets=["q_proj", "v_prj"]), "upstream wavlm_local")
    msg = str(e.value)
    assert "\n" not in msg and "'v_prj' matches no linear module of upstream wavlm_local" in msg
    assert "['q_proj', 'v_prj']" in msg and "q_proj, fc1" in msg
    assert all(p.requires_grad for p in module.parameters())  # refused before anything changed


@pytest.mark.parametrize("override, message", [
    ("rank: 0", "train_conf.upstream_adapter.rank: 0 is not allowed: expected an integer >= 1"),
    ("kind: dora", "train_conf.upstream_adapter.kind: 'dora' is not allowed: expected one of lora"),
    ("alpha: 0", "train_conf.upstream_adapter.alpha: 0 is not allowed"),
])
def test_bad_adapter_values_are_config_errors(tmp_path, override, message):
    import yaml
    from upmp.train.schema import resolve_train_config
    path = tmp_path / "c.yaml"
    path.write_text("train_conf: {upstream_adapter: {%s}}\n" % override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_train_config(str(path))
    resolved = resolve_train_config(str(path), ["--train_conf.upstream_adapter", yaml.safe_dump({"rank": 8})])
    assert asdict(resolved.train_conf.upstream_adapter) == lora(rank=8, alpha=128.0)  # defaults filled in


def test_adapter_needs_online_training_and_excludes_fine_tuning(dump):
    from upmp.train.inputs import Inputs, build_training_data
    from upmp.train.schema import check_train_config
    inputs = Inputs(train_scp=str(dump / "dump/layers.scp"), utt2spk=str(dump / "utt2spk"))
    cfg = check_train_config({"train_conf": {"upstream_adapter": {"rank": 4}}})
    with pytest.raises(ConfigError, match="upstream_adapter needs online training .* no upstream in the training loop"):
        build_training_data(cfg, inputs, "cpu")
    cfg = replace(cfg, train_conf=replace(cfg.train_conf, finetune_upstream=True))
    with pytest.raises(ConfigError, match="upstream_adapter and train_conf.finetune_upstream: choose one"):
        build_training_data(cfg, inputs, "cpu")
