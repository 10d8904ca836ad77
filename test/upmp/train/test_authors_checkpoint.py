"""Importing the authors' checkpoints (upmp/train/authors_checkpoint.py, upmp.bin.import_checkpoint).

The checkpoints are written here with the authors' key names and file layouts (UniPool-SV's
model_best.pt dict, LAP's <epoch>epoch/model.state beside best_tracking.txt), without their code;
the imported backends are checked against plain forwards written over the authors' keys, in the
authors' evaluation form (no mask: x.std() with n - 1 in the statistics pooling's context)."""
import json
import os
import pickle
import random
import re
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from helpers import one_line_error, run_module, snapshot
from upmp.errors import ModelFileError, OutputError
from upmp.train.authors_checkpoint import import_checkpoint

D, NL = 32, 2  # the tiny transformers WavLM: 32 channels, hidden states 0..2


@pytest.fixture(scope="module")
def hf_wavlm(tmp_path_factory):
    cfg = transformers.WavLMConfig(hidden_size=D, num_hidden_layers=NL, num_attention_heads=2, intermediate_size=64,
                                   conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                   vocab_size=8)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf") / "wavlm"
    transformers.WavLMModel(cfg).save_pretrained(path)
    return path


def _backbone(hf_wavlm, prefix):
    model = transformers.WavLMModel.from_pretrained(hf_wavlm)
    return {f"{prefix}{k}": v.clone() for k, v in model.state_dict().items()}


def _bn(sd, key, n, g):
    sd.update({f"{key}.weight": 1 + 0.1 * torch.randn(n, generator=g), f"{key}.bias": 0.1 * torch.randn(n, generator=g),
               f"{key}.running_mean": 0.1 * torch.randn(n, generator=g), f"{key}.running_var": 0.5 + torch.rand(n, generator=g),
               f"{key}.num_batches_tracked": torch.tensor(7)})


def _w(g, *shape):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return torch.randn(*shape, generator=g) / fan_in ** 0.5


def unipool_model_state(backbone, L, c=4, n_blocks=2, E=8, loss_heads=2, classes=5, seed=0):
    """A UniPool-SV SVmodel state_dict by the authors' key names and shapes (benchmarks/UniPool/model.py)."""
    g = torch.Generator().manual_seed(seed)
    w4, sd = 4 * c, dict(backbone)
    p = "encoder.d3net."
    sd[f"{p}projection.0.weight"], sd[f"{p}projection.0.bias"] = _w(g, w4, D, 1, 1), 0.1 * torch.randn(w4, generator=g)
    _bn(sd, f"{p}projection.1", w4, g)
    for i in range(n_blocks):
        for j in range(L):
            sd[f"{p}vadnet.{i}.superb.{j}.score_vector"] = torch.eye(L)[j] + 0.3 * torch.randn(L, generator=g)
        sd[f"{p}vadnet.{i}.weight"], sd[f"{p}vadnet.{i}.bias"] = _w(g, L, w4, 1), 0.1 * torch.randn(L, 1, 1, generator=g)
        b = f"{p}densenet.{i}.m."
        sd[f"{b}0.projection.weight"], sd[f"{b}0.projection.bias"] = _w(g, c, w4, 1, 1), 0.1 * torch.randn(c, generator=g)
        for k in range(3):
            for j in range(k + 1):
                _bn(sd, f"{b}0.dense.{k}.mdconv.{j}.0", c, g)
                sd[f"{b}0.dense.{k}.mdconv.{j}.2.weight"] = _w(g, c, c, 3, 3)
                sd[f"{b}0.dense.{k}.mdconv.{j}.2.bias"] = 0.1 * torch.randn(c, generator=g)
        for se in ("avg_se", "max_se"):
            sd[f"{b}1.{se}.1.weight"], sd[f"{b}1.{se}.1.bias"] = _w(g, c, w4, 1, 1), 0.1 * torch.randn(c, generator=g)
            _bn(sd, f"{b}1.{se}.3", c, g)
            sd[f"{b}1.{se}.4.weight"], sd[f"{b}1.{se}.4.bias"] = _w(g, w4, c, 1, 1), 0.1 * torch.randn(w4, generator=g)
    q = "encoder.l_pool."
    _bn(sd, f"{q}in_projection.0", w4 * n_blocks, g)
    sd[f"{q}in_projection.1.weight"] = _w(g, w4, w4 * n_blocks, 1, 1)
    sd[f"{q}W1"], sd[f"{q}b1"] = _w(g, 4, L, L // 2), 0.1 * torch.randn(4, 1, L // 2, generator=g)
    sd[f"{q}W2"], sd[f"{q}b2"] = _w(g, 4, L // 2, L), 0.1 * torch.randn(4, 1, L, generator=g)
    sd[f"{q}out_projection.0.weight"] = _w(g, w4, w4, 1)
    _bn(sd, f"{q}out_projection.1", w4, g)
    t = "encoder.t_pool."
    sd[f"{t}attention.0.weight"], sd[f"{t}attention.0.bias"] = _w(g, w4 // 2, 3 * w4, 1), 0.1 * torch.randn(w4 // 2, generator=g)
    _bn(sd, f"{t}attention.2", w4 // 2, g)
    sd[f"{t}attention.3.weight"], sd[f"{t}attention.3.bias"] = _w(g, w4, w4 // 2, 1), 0.1 * torch.randn(w4, generator=g)
    _bn(sd, f"{t}attn_norm", 2 * w4, g)
    sd[f"{t}out_proj.weight"], sd[f"{t}out_proj.bias"] = _w(g, E, 2 * w4), 0.1 * torch.randn(E, generator=g)
    _bn(sd, f"{t}out_norm", E, g)
    sd["aam_softmax.weight"] = torch.randn(loss_heads, E // loss_heads, classes, generator=g)
    sd["span_mask_kernel"] = torch.ones(1, 1, 3)
    return sd


def save_like_unipool_trainer(sd, path):
    """torch.save as UniPool-SV's trainer writes model_best.pt (optimizer, OneCycle scheduler,
    random states with numpy's, validation figures)."""
    params = [torch.nn.Parameter(v.clone()) for k, v in sd.items() if k.startswith("encoder.") and v.is_floating_point()]
    optimizer = torch.optim.Adam(params)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=10)
    optimizer.step()
    scheduler.step()
    rand = {"rand_state": random.getstate(), "np_state": np.random.get_state(), "torch_state": torch.random.get_rng_state(),
            "os_hash_state": "42", "cuda_state": {}}
    torch.save({"epoch_no": 4000, "rand_state": rand, "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "model_state": sd, "val_FAR": torch.Tensor([0.1]),
                "val_FRR": torch.Tensor([0.2]), "val_FAR/FRR_thresh": torch.Tensor([0.5]), "val_threshold": 0.4}, path)
    return path


def _bn_eval(x, sd, key):
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"], sd[f"{key}.bias"],
                        False, 0.0, 1e-5)


def _layer_pool(x, sd, q, heads, in_conv_bias=None, out_bias=None):
    """The authors' layer attention pooling, eval: (B, C, L, T) -> (B, C', T)."""
    x = F.conv2d(_bn_eval(x, sd, q[0]), sd[q[1]], in_conv_bias)
    B, C, L, T = x.shape
    xh = x.view(B, heads, C // heads, L, T)

    def mlp(z):  # (B, h, L, T) -> (B, h, L, T), per head over L
        hidden = torch.relu(torch.einsum("bhlt,hlk->bhtk", z, sd[q[2]]) + sd[q[3]][None])
        return (torch.einsum("bhtk,hkl->bhtl", hidden, sd[q[4]]) + sd[q[5]][None]).permute(0, 1, 3, 2)
    score = torch.sigmoid(mlp(xh.mean(dim=2)) + mlp(xh.amax(dim=2)))
    pooled = (xh * score[:, :, None]).amax(dim=3).reshape(B, C, T)
    return _bn_eval(F.conv1d(pooled, sd[q[6]], out_bias), sd, q[7])


def _stat_pool(x, sd, t, names):  # t: the attention's prefix; names: the full keys of the last three
    """ECAPA attentive statistics pooling as both authors' codes evaluate it (no mask: x.std())."""
    T = x.shape[-1]
    ctx = torch.cat([x, x.mean(-1, keepdim=True).expand(-1, -1, T), x.std(-1, keepdim=True).expand(-1, -1, T)], dim=1)
    h = _bn_eval(torch.relu(F.conv1d(ctx, sd[f"{t}attention.0.weight"], sd[f"{t}attention.0.bias"])), sd, f"{t}attention.2")
    w = torch.softmax(F.conv1d(h, sd[f"{t}attention.3.weight"], sd[f"{t}attention.3.bias"]), dim=-1)
    mu = (x * w).sum(-1)
    sg = ((x * x * w).sum(-1) - mu * mu).clamp(min=1e-4).sqrt()
    stats = _bn_eval(torch.cat([mu, sg], dim=1), sd, names[0])
    return _bn_eval(F.linear(stats, sd[f"{names[1]}.weight"], sd[f"{names[1]}.bias"]), sd, names[2])


def unipool_forward(sd, x, n_blocks=2):
    """The UniPool encoder in eval mode, written from the authors' keys: (B, D, L, T) -> (B, E)."""
    p = "encoder.d3net."
    x = _bn_eval(F.conv2d(x, sd[f"{p}projection.0.weight"], sd[f"{p}projection.0.bias"]), sd, f"{p}projection.1")
    L, outs = x.shape[2], []
    for i in range(n_blocks):
        mixed = torch.stack([(x * torch.softmax(sd[f"{p}vadnet.{i}.superb.{j}.score_vector"], 0)[None, None, :, None]).sum(2)
                             for j in range(L)], dim=2)
        score = torch.matmul(mixed.permute(0, 2, 3, 1), sd[f"{p}vadnet.{i}.weight"]) + sd[f"{p}vadnet.{i}.bias"]
        x = mixed * score.sigmoid().permute(0, 3, 1, 2)
        b = f"{p}densenet.{i}.m."
        ys = [F.conv2d(x, sd[f"{b}0.projection.weight"], sd[f"{b}0.projection.bias"])]
        for k in range(3):
            ys.append(sum(F.conv2d(torch.relu(_bn_eval(ys[j], sd, f"{b}0.dense.{k}.mdconv.{j}.0")),
                                   sd[f"{b}0.dense.{k}.mdconv.{j}.2.weight"], sd[f"{b}0.dense.{k}.mdconv.{j}.2.bias"],
                                   dilation=2 ** j, padding=2 ** j) for j in range(k + 1)))
        y = torch.cat(ys, dim=1)

        def se(name, pooled):
            h = torch.relu(F.conv2d(pooled, sd[f"{b}1.{name}.1.weight"], sd[f"{b}1.{name}.1.bias"]))
            h = _bn_eval(h, sd, f"{b}1.{name}.3")
            return F.conv2d(h, sd[f"{b}1.{name}.4.weight"], sd[f"{b}1.{name}.4.bias"])
        f = y * torch.sigmoid(se("avg_se", y.mean(dim=(2, 3), keepdim=True)) + se("max_se", y.amax(dim=(2, 3), keepdim=True)))
        x = x + (x + f)  # ResConnection inside, x + dense(x) outside
        outs.append(x)
    q = "encoder.l_pool."
    z = _layer_pool(torch.cat(outs, dim=1), sd, [f"{q}in_projection.0", f"{q}in_projection.1.weight", f"{q}W1", f"{q}b1",
                                                  f"{q}W2", f"{q}b2", f"{q}out_projection.0.weight", f"{q}out_projection.1"], 4)
    t = "encoder.t_pool."
    return _stat_pool(z, sd, t, (f"{t}attn_norm", f"{t}out_proj", f"{t}out_norm"))


def _cbr(sd, key, cin, cout, kl, kt, g):
    sd[f"{key}.conv.weight"], sd[f"{key}.conv.bias"] = _w(g, cout, cin, kl, kt), 0.1 * torch.randn(cout, generator=g)
    _bn(sd, f"{key}.bn", cout, g)


def _se(sd, key, c, se, g):
    sd[f"{key}.se_attention.1.weight"], sd[f"{key}.se_attention.1.bias"] = _w(g, se, c, 1, 1), 0.1 * torch.randn(se, generator=g)
    sd[f"{key}.se_attention.3.weight"], sd[f"{key}.se_attention.3.bias"] = _w(g, c, se, 1, 1), 0.1 * torch.randn(c, generator=g)


def ltdnn_model_state(backbone, kind, L, C=8, se=4, H=8, heads=2, E=6, n_blocks=2, depth=4, scale=4, loss_heads=2,
                      classes=5, seed=0):
    """An L-TDNN SVmodel state_dict by the authors' key names and shapes (L-TDNN_D3Net / L-TDNN_ECAPA
    model.py: encoder.net = D3Block / ECAPA, encoder.l_pool, encoder.t_pool); L = n_layer + 1."""
    g = torch.Generator().manual_seed(seed)
    sd, p = dict(backbone), "encoder.net."
    _bn(sd, f"{p}in_conv.0", D, g)
    _cbr(sd, f"{p}in_conv.1", D, C, *((1, 5) if kind == "ltdnn_d3net" else (5, 3)), g)
    if kind == "ltdnn_d3net":
        for b in range(n_blocks):
            for d in range(depth):
                w = C - d * C // depth
                _cbr(sd, f"{p}se_d2blocks.{b}.layers.{d}", w, w, 3, 3, g)
            _se(sd, f"{p}se_d2blocks.{b}.se", C, se, g)
    else:
        n_blocks = 3
        for b in (1, 2, 3):
            q = f"{p}block{b}.se_res2block"
            _cbr(sd, f"{q}.0", C, C, 1, 1, g)
            for i in range(scale - 1):
                _cbr(sd, f"{q}.1.convs.{i}", C // scale, C // scale, 3, 3, g)
            _cbr(sd, f"{q}.2", C, C, 1, 1, g)
            _se(sd, f"{q}.3", C, se, g)
    n = n_blocks * C
    sd[f"{p}fusion.0.weight"], sd[f"{p}fusion.0.bias"] = _w(g, n, n, 1, 1), 0.1 * torch.randn(n, generator=g)
    q = "encoder.l_pool."
    _bn(sd, f"{q}in_projection.0", n, g)
    sd[f"{q}in_projection.1.weight"] = _w(g, H, n, 1, 1)
    sd[f"{q}W1"], sd[f"{q}b1"] = _w(g, heads, L, L // 2), 0.1 * torch.randn(heads, 1, L // 2, generator=g)
    sd[f"{q}W2"], sd[f"{q}b2"] = _w(g, heads, L // 2, L), 0.1 * torch.randn(heads, 1, L, generator=g)
    sd[f"{q}out_projection.0.weight"] = _w(g, H, H, 1)
    _bn(sd, f"{q}out_projection.1", H, g)
    t = "encoder.t_pool."
    sd[f"{t}attention.0.weight"], sd[f"{t}attention.0.bias"] = _w(g, H // 2, 3 * H, 1), 0.1 * torch.randn(H // 2, generator=g)
    _bn(sd, f"{t}attention.2", H // 2, g)
    sd[f"{t}attention.3.weight"], sd[f"{t}attention.3.bias"] = _w(g, H, H // 2, 1), 0.1 * torch.randn(H, generator=g)
    _bn(sd, f"{t}attn_norm", 2 * H, g)
    sd[f"{t}out_proj.weight"], sd[f"{t}out_proj.bias"] = _w(g, E, 2 * H), 0.1 * torch.randn(E, generator=g)
    _bn(sd, f"{t}out_norm", E, g)
    sd["aam_softmax.weight"] = torch.randn(loss_heads, E // loss_heads, classes, generator=g)
    sd["span_mask_kernel"] = torch.ones(1, 1, 3)
    return sd


def _cbr_eval(x, sd, key, dilation=1):  # Conv2d ('same') -> ReLU -> BN2d
    w = sd[f"{key}.conv.weight"]
    pad = tuple(dilation * (k - 1) // 2 for k in w.shape[2:])
    return _bn_eval(torch.relu(F.conv2d(x, w, sd[f"{key}.conv.bias"], padding=pad, dilation=dilation)), sd, f"{key}.bn")


def _se_eval(x, sd, key):
    squeezed = x.mean(dim=(2, 3), keepdim=True)
    s = torch.relu(F.conv2d(squeezed, sd[f"{key}.se_attention.1.weight"], sd[f"{key}.se_attention.1.bias"]))
    return x * torch.sigmoid(F.conv2d(s, sd[f"{key}.se_attention.3.weight"], sd[f"{key}.se_attention.3.bias"]))


def ltdnn_forward(sd, x, kind, heads=2):
    """The L-TDNN encoder in eval mode, written from the authors' keys: (B, D, L, T) -> (B, E)."""
    p = "encoder.net."
    x = _cbr_eval(_bn_eval(x, sd, f"{p}in_conv.0"), sd, f"{p}in_conv.1")
    outs = []
    if kind == "ltdnn_d3net":
        b = 0
        while f"{p}se_d2blocks.{b}.se.se_attention.1.weight" in sd:
            layer, parts, d = f"{p}se_d2blocks.{b}.layers", [], 0
            while f"{layer}.{d}.conv.weight" in sd:
                x = x + _cbr_eval(x, sd, f"{layer}.{d}", 2 ** d)
                if f"{layer}.{d + 1}.conv.weight" in sd:  # the last channels leave; the next step is narrower
                    keep = sd[f"{layer}.{d + 1}.conv.weight"].shape[0]
                    parts, x = parts + [x[:, keep:]], x[:, :keep]
                d += 1
            x = _se_eval(torch.cat(parts + [x], dim=1), sd, f"{p}se_d2blocks.{b}.se")
            outs.append(x)
            b += 1
    else:
        for b, dilation in ((1, 2), (2, 3), (3, 4)):
            q = f"{p}block{b}.se_res2block"
            width = sd[f"{q}.1.convs.0.conv.weight"].shape[0]
            spx = torch.split(_cbr_eval(x, sd, f"{q}.0"), width, dim=1)
            ys, sp = [], spx[0]
            for i in range(len(spx) - 1):
                sp = _cbr_eval(sp if i == 0 else sp + spx[i], sd, f"{q}.1.convs.{i}", dilation)
                ys.append(sp)
            x = x + _se_eval(_cbr_eval(torch.cat(ys + [spx[-1]], dim=1), sd, f"{q}.2"), sd, f"{q}.3")
            outs.append(x)
    z = torch.relu(F.conv2d(torch.cat(outs, dim=1), sd[f"{p}fusion.0.weight"], sd[f"{p}fusion.0.bias"]))
    q = "encoder.l_pool."
    z = _layer_pool(z, sd, [f"{q}in_projection.0", f"{q}in_projection.1.weight", f"{q}W1", f"{q}b1",
                            f"{q}W2", f"{q}b2", f"{q}out_projection.0.weight", f"{q}out_projection.1"], heads)
    t = "encoder.t_pool."
    return _stat_pool(z, sd, t, (f"{t}attn_norm", f"{t}out_proj", f"{t}out_norm"))


def lap_model_state(backbone, L, heads=4, C=16, E=12, K=3, classes=5, seed=0):
    """A LAP SVmodel state_dict (src/model.py: frontend, backend.layer_aggregation / speaker_network)."""
    g = torch.Generator().manual_seed(seed)
    sd, a, s = dict(backbone), "backend.layer_aggregation.", "backend.speaker_network."
    _bn(sd, f"{a}in_norm", D, g)
    sd[f"{a}in_weight.weight"], sd[f"{a}in_weight.bias"] = _w(g, D, D, 1, 1), 0.1 * torch.randn(D, generator=g)
    sd[f"{a}sq_weight"], sd[f"{a}sq_bias"] = _w(g, heads, L, L // 2), 0.1 * torch.randn(heads, 1, L // 2, generator=g)
    sd[f"{a}ex_weight"], sd[f"{a}ex_bias"] = _w(g, heads, L // 2, L), 0.1 * torch.randn(heads, 1, L, generator=g)
    sd[f"{a}out_weight.weight"], sd[f"{a}out_weight.bias"] = _w(g, C, D, 1), 0.1 * torch.randn(C, generator=g)
    _bn(sd, f"{a}out_norm", C, g)
    sd[f"{s}t_pool.attention.0.weight"] = _w(g, C // 2, 3 * C, 1)
    sd[f"{s}t_pool.attention.0.bias"] = 0.1 * torch.randn(C // 2, generator=g)
    _bn(sd, f"{s}t_pool.attention.2", C // 2, g)
    sd[f"{s}t_pool.attention.3.weight"] = _w(g, C, C // 2, 1)
    sd[f"{s}t_pool.attention.3.bias"] = 0.1 * torch.randn(C, generator=g)
    _bn(sd, f"{s}t_pool.norm", 2 * C, g)
    sd[f"{s}emb_weight.weight"], sd[f"{s}emb_weight.bias"] = _w(g, E, 2 * C), 0.1 * torch.randn(E, generator=g)
    _bn(sd, f"{s}emb_norm", E, g)
    sd["aam_softmax.weight"] = torch.randn(K, E, classes, generator=g)
    return sd


def lap_forward(sd, x, heads=4):
    """LAP + ASTP in eval mode from the authors' keys: (B, D, L, T) -> (B, E)."""
    a = "backend.layer_aggregation."
    z = _layer_pool(x, sd, [f"{a}in_norm", f"{a}in_weight.weight", f"{a}sq_weight", f"{a}sq_bias", f"{a}ex_weight",
                            f"{a}ex_bias", f"{a}out_weight.weight", f"{a}out_norm"], heads,
                    in_conv_bias=sd[f"{a}in_weight.bias"], out_bias=sd[f"{a}out_weight.bias"])
    s = "backend.speaker_network."
    return _stat_pool(z, sd, f"{s}t_pool.", (f"{s}t_pool.norm", f"{s}emb_weight", f"{s}emb_norm"))


def load(exp):
    from upmp.checkpoint import load_model, read_model
    return load_model(str(exp / "model.pt"))[0], read_model(str(exp / "model.pt"))


def test_unipool_checkpoint_embeds_as_the_authors_encoder(hf_wavlm, tmp_path):
    sd = unipool_model_state(_backbone(hf_wavlm, "backbone."), L=NL)
    (tmp_path / "result").mkdir()
    src = save_like_unipool_trainer(sd, tmp_path / "result" / "model_best.pt")  # --from its run folder
    exp = import_checkpoint(str(src.parent), "unipool", f"hf:{hf_wavlm}", None, str(tmp_path / "exp" / "unipool"))
    model, saved = load(exp)
    assert saved["config"]["backend"] == "upmp" and not saved["config"]["use_hidden0"]
    assert {k: saved["config"]["backend_conf"][k] for k in ("conv_dim", "n_blocks", "embed_dim", "residual", "pooling")} == \
        dict(conv_dim=4, n_blocks=2, embed_dim=8, residual="reference", pooling="authors")
    assert "upstream" not in saved and saved["step"] == 4000  # frozen: nothing of the upstream stored
    torch.manual_seed(0)
    x = torch.randn(3, D, NL + 1, 23)  # hidden states 0..2; UniPool drops 0
    with torch.no_grad():
        want = unipool_forward(sd, x[:, :, 1:])
        got = model(x)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        # padded in a batch, an utterance embeds as the authors' code embeds it alone
        padded = torch.cat([x[:1], torch.randn(1, D, NL + 1, 9)], dim=3)
        mask = torch.ones(1, 32, dtype=torch.bool)
        mask[0, 23:] = False
        torch.testing.assert_close(model(padded, mask), want[:1], atol=1e-4, rtol=1e-4)
    W = sd["aam_softmax.weight"]  # (heads, E / heads, classes) -> head i: (classes, E / heads)
    assert all(torch.equal(saved["head"][f"heads.{i}.weight"], W[i].T) for i in range(2))
    assert saved["config"]["loss_conf"]["heads"] == 2
    assert json.loads((exp / "imported.json").read_text())["kind"] == "unipool"


def test_lap_run_folder_imports_its_best_epoch(hf_wavlm, tmp_path):
    L = NL + 1  # LAP sees every hidden state
    best, other = (lap_model_state(_backbone(hf_wavlm, "frontend."), L=L, seed=s) for s in (1, 2))
    run = tmp_path / "lap_run"
    for epoch, sd in ((7, best), (9, other)):
        (run / f"{epoch}epoch").mkdir(parents=True)
        torch.save(sd, run / f"{epoch}epoch" / "model.state")
        torch.save(epoch, run / f"{epoch}epoch" / "epoch.int")
    (run / "best_tracking.txt").write_text("7, 1.2345%\n9, 2.3456%\n")
    exp = import_checkpoint(str(run), "lap", f"hf:{hf_wavlm}", None, str(tmp_path / "exp" / "lap"))
    model, saved = load(exp)
    assert saved["config"]["use_hidden0"] and saved["config"]["backend_conf"]["variant"] == "authors"
    x = torch.randn(2, D, L, 31)
    with torch.no_grad():
        torch.testing.assert_close(model(x), lap_forward(best, x), atol=1e-4, rtol=1e-4)
    W = best["aam_softmax.weight"]  # (K, E, classes): our row c * K + k is class c's sub-centre k
    head = saved["head"]["heads.0.weight"]
    assert all(torch.equal(head[c * 3 + k], W[k, :, c]) for c in range(5) for k in range(3))
    assert saved["config"]["loss"] == "aamsoftmax_subcenter_topk" and saved["config"]["loss_conf"]["subcenters"] == 3


@pytest.mark.parametrize("kind", ["ltdnn_d3net", "ltdnn_ecapa"])
def test_ltdnn_checkpoint_embeds_as_the_authors_encoder(kind, hf_wavlm, tmp_path):
    L = NL + 1  # L-TDNN sees hidden states 0..n_layer (n_layer 0: every layer)
    sd = ltdnn_model_state(_backbone(hf_wavlm, "backbone."), kind, L=L)
    src = save_like_unipool_trainer(sd, tmp_path / "model_best.pt")  # the L-TDNN trainer is UniPool-SV's
    exp = import_checkpoint(str(src), kind, f"hf:{hf_wavlm}", None, str(tmp_path / "exp" / kind))
    model, saved = load(exp)
    cfg = saved["config"]
    assert cfg["backend"] == kind and cfg["use_hidden0"] and "upstream" not in saved
    want_conf = dict(conv_dim=8, se_channels=4, hidden=8, heads=2, embed_dim=6, eval_std="unbiased",
                     **(dict(n_blocks=2, depth=4) if kind == "ltdnn_d3net" else dict(scale=4)))
    assert {k: cfg["backend_conf"][k] for k in want_conf} == want_conf
    torch.manual_seed(0)
    x = torch.randn(3, D, L, 23)
    with torch.no_grad():
        want = ltdnn_forward(sd, x, kind)
        assert want.abs().max() > 0.5  # not a degenerate output
        torch.testing.assert_close(model(x), want, atol=1e-4, rtol=1e-4)
        padded = torch.cat([x[:1], torch.randn(1, D, L, 9)], dim=3)  # batched with padding: as alone
        mask = torch.arange(32)[None] < 23
        torch.testing.assert_close(model(padded, mask), want[:1], atol=1e-4, rtol=1e-4)
    W = sd["aam_softmax.weight"]  # (heads, E / heads, classes) -> head i: (classes, E / heads)
    assert all(torch.equal(saved["head"][f"heads.{i}.weight"], W[i].T) for i in range(2))
    assert cfg["loss"] == "aamsoftmax" and {k: cfg["loss_conf"][k] for k in ("heads", "margin", "scale")} == \
        dict(heads=2, margin=0.2, scale=30.0)
    assert json.loads((exp / "imported.json").read_text())["kind"] == kind


def test_fine_tuned_backbone_becomes_a_fine_tuned_upstream(hf_wavlm, tiny_wavlm, tmp_path):
    from upmp.checkpoint import load_upstream
    sd = unipool_model_state(_backbone(hf_wavlm, "backbone."), L=NL)
    key = "encoder.layers.1.attention.q_proj.weight"
    sd[f"backbone.{key}"] = sd[f"backbone.{key}"] + 0.05
    src = save_like_unipool_trainer(sd, tmp_path / "model_best.pt")
    model, saved = load(import_checkpoint(str(src), "unipool", f"hf:{hf_wavlm}", None, str(tmp_path / "exp")))
    assert saved["upstream"]["name"] == f"hf:{hf_wavlm}"
    up = load_upstream(f"hf:{hf_wavlm}", None, "cpu", model.finetuned_upstream)
    assert torch.equal(up.state_dict()[f"model.{key}"], sd[f"backbone.{key}"])
    # an upstream of another provider cannot hold it (same layout, other weights): refused, naming a
    # tensor and what to give
    with pytest.raises(ModelFileError, match=r"model_best.pt: backbone\.\S+ is not among the pretrained weights of "
                                             r"--upstream wavlm_local .*give --upstream hf:<dir>"):
        import_checkpoint(str(src), "unipool", "wavlm_local", str(tiny_wavlm), str(tmp_path / "exp2"))
    assert not (tmp_path / "exp2").exists()


def test_frozen_backbone_under_another_providers_names(tiny_wavlm, tmp_path):
    # the S3PRL WavLM of the tiny checkpoint: the same tensors under other names is a frozen upstream
    from upmp.upstream import build_upstream
    up = build_upstream("wavlm_local", str(tiny_wavlm))
    L = up.num_layers - 1
    backbone = {f"backbone.renamed.{i}": v.clone() for i, v in enumerate(up.state_dict().values())}
    src = save_like_unipool_trainer(unipool_model_state(backbone, L=L), tmp_path / "model_best.pt")
    exp = import_checkpoint(str(src), "unipool", "wavlm_local", str(tiny_wavlm), str(tmp_path / "exp"))
    model, saved = load(exp)
    assert "upstream" not in saved and saved["inputs"] == {"upstream": "wavlm_local", "upstream_ckpt": str(tiny_wavlm)}
    assert saved["layer_stack"]["num_layers"] == up.num_layers


@pytest.fixture
def unipool_file(hf_wavlm, tmp_path):
    def write(edit=None, name="model_best.pt"):
        sd = unipool_model_state(_backbone(hf_wavlm, "backbone."), L=NL)
        if edit:
            edit(sd)
        return save_like_unipool_trainer(sd, tmp_path / name)
    return write


def _del(key):
    return lambda sd: sd.pop(key)


@pytest.mark.parametrize("edit, message", [
    (_del("encoder.l_pool.W2"), r"encoder.l_pool.W2: missing from the checkpoint \(needed for layer_pooling.w2\)"),
    (_del("encoder.d3net.densenet.1.m.0.dense.2.mdconv.1.2.bias"),
     "encoder.d3net.densenet.1.m.0.dense.2.mdconv.1.2.bias: missing from the checkpoint"),
    (lambda sd: sd.update({"encoder.t_pool.attention.3.weight": torch.zeros(16, 8, 3)}),
     r"encoder.t_pool.attention.3.weight: shape \(16, 8, 3\) does not fit "
     r"frame_pooling.attention.3.weight of shape \(16, 8, 1\)"),
    (lambda sd: sd.update({"encoder.d3net.extra.weight": torch.zeros(2)}),
     "encoder.d3net.extra.weight: a key of the checkpoint that this kind does not have"),
    (lambda sd: sd.update({"aam_softmax.weight": torch.zeros(8, 5)}),
     r"aam_softmax.weight: shape \(8, 5\); expected \(heads, E / heads, classes\)"),
    (lambda sd: sd.update({"backbone.encoder.layer_norm.weight": torch.zeros(D + 1)}),
     r"backbone.encoder.layer_norm.weight: shape \(33,\), but --upstream hf:.* has \(32,\)"),
])
def test_a_key_that_does_not_fit_is_named(hf_wavlm, unipool_file, tmp_path, edit, message):
    with pytest.raises(ModelFileError, match=message):
        import_checkpoint(str(unipool_file(edit)), "unipool", f"hf:{hf_wavlm}", None, str(tmp_path / "exp"))
    assert not (tmp_path / "exp").exists()


def test_wrong_kind_and_wrong_upstream_are_one_line(hf_wavlm, unipool_file, tmp_path):
    lap_file = tmp_path / "model.state"
    torch.save(lap_model_state(_backbone(hf_wavlm, "frontend."), L=NL + 1), lap_file)
    with pytest.raises(ModelFileError, match="backend.layer_aggregation.sq_weight: missing; it looks like --kind unipool"):
        import_checkpoint(str(unipool_file()), "lap", f"hf:{hf_wavlm}", None, str(tmp_path / "exp"))
    with pytest.raises(ModelFileError, match="encoder.d3net.projection.0.weight: missing; it looks like --kind lap"):
        import_checkpoint(str(lap_file), "unipool", f"hf:{hf_wavlm}", None, str(tmp_path / "exp"))
    with pytest.raises(ModelFileError, match=r"takes 2 hidden states of 32 channels; --upstream ge2e gives 3 of 256 "
                                             r"\(hidden state 0 dropped\)"):
        import_checkpoint(str(unipool_file()), "unipool", "ge2e", None, str(tmp_path / "exp"))
    assert not (tmp_path / "exp").exists()


@pytest.fixture
def ltdnn_file(hf_wavlm, tmp_path):
    def write(kind, edit=None, L=NL + 1):
        sd = ltdnn_model_state(_backbone(hf_wavlm, "backbone."), kind, L=L)
        if edit:
            edit(sd)
        return save_like_unipool_trainer(sd, tmp_path / f"{kind}.pt")
    return write


@pytest.mark.parametrize("kind, given, marker", [
    ("ltdnn_d3net", "ltdnn_ecapa", "encoder.net.block1.se_res2block.0.conv.weight"),
    ("ltdnn_ecapa", "ltdnn_d3net", "encoder.net.se_d2blocks.0.se.se_attention.1.weight"),
    ("ltdnn_d3net", "unipool", "encoder.d3net.projection.0.weight"),
    ("unipool", "ltdnn_ecapa", "encoder.net.block1.se_res2block.0.conv.weight")])
def test_ltdnn_wrong_kind_names_the_kind_it_looks_like(hf_wavlm, ltdnn_file, unipool_file, tmp_path, kind, given, marker):
    src = unipool_file() if kind == "unipool" else ltdnn_file(kind)
    with pytest.raises(ModelFileError, match=f"{src.name}: {re.escape(marker)}: missing; it looks like --kind {kind}$"):
        import_checkpoint(str(src), given, f"hf:{hf_wavlm}", None, str(tmp_path / "exp"))
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("kind, edit, message", [
    ("ltdnn_d3net", _del("encoder.net.fusion.0.bias"), "encoder.net.fusion.0.bias is missing"),
    ("ltdnn_ecapa", _del("encoder.net.block2.se_res2block.1.convs.2.bn.running_var"),
     "encoder.net.block2.se_res2block.1.convs.2.bn.running_var is missing"),
    ("ltdnn_d3net", lambda sd: sd.update({"encoder.t_pool.out_norm.weight": torch.zeros(5)}),
     r"encoder.t_pool.out_norm.weight has shape \(5,\), ltdnn_d3net needs \(6,\)"),
    ("ltdnn_ecapa", lambda sd: sd.update({"encoder.net.block3.se_res2block.3.se_attention.3.weight": torch.zeros(8, 4, 3, 3)}),
     r"encoder.net.block3.se_res2block.3.se_attention.3.weight has shape \(8, 4, 3, 3\), ltdnn_ecapa needs \(8, 4, 1, 1\)"),
    ("ltdnn_ecapa", lambda sd: sd.update({"encoder.attn_vad.weight": torch.zeros(3)}),
     "encoder.attn_vad.weight is not part of ltdnn_ecapa"),
    ("ltdnn_d3net", lambda sd: sd.update({"aam_softmax.weight": torch.zeros(6, 5)}),
     r"aam_softmax.weight: shape \(6, 5\); expected \(heads, E / heads, classes\)")])
def test_ltdnn_key_that_does_not_fit_is_named(hf_wavlm, ltdnn_file, tmp_path, kind, edit, message):
    src = ltdnn_file(kind, edit)
    with pytest.raises(ModelFileError, match=f"^{re.escape(str(src))}: .*{message}") as e:
        import_checkpoint(str(src), kind, f"hf:{hf_wavlm}", None, str(tmp_path / "exp"))
    assert "\n" not in str(e.value) and not (tmp_path / "exp").exists()


def test_ltdnn_on_fewer_layers_than_the_upstream_is_refused(hf_wavlm, ltdnn_file, tmp_path):
    # the authors' n_layer 1 keeps hidden states 0..1 of the 2-layer upstream: upmp feeds all 3
    with pytest.raises(ModelFileError, match=r"ltdnn_d3net.pt: its ltdnn_d3net network takes the first 2 hidden states "
                                             r"\(trained with the authors' n_layer 1\); --upstream hf:\S+ gives 3, "
                                             r"and upmp feeds a backend all of them"):
        import_checkpoint(str(ltdnn_file("ltdnn_d3net", L=NL)), "ltdnn_d3net", f"hf:{hf_wavlm}", None, str(tmp_path / "exp"))
    # more hidden states than the upstream has: another upstream
    with pytest.raises(ModelFileError, match=r"takes 4 hidden states of 32 channels; --upstream hf:\S+ gives 3 of 32; "
                                             "give the upstream it was trained on"):
        import_checkpoint(str(ltdnn_file("ltdnn_ecapa", L=NL + 2)), "ltdnn_ecapa", f"hf:{hf_wavlm}", None,
                          str(tmp_path / "exp"))
    assert not (tmp_path / "exp").exists()


def test_out_is_never_an_existing_experiment(hf_wavlm, unipool_file, tmp_path):
    exp = tmp_path / "exp"
    (exp / "embeddings").mkdir(parents=True)
    (exp / "model.pt").write_bytes(b"an experiment")
    before = snapshot(tmp_path / "exp")
    with pytest.raises(OutputError, match="exists and is not empty; an experiment is never overwritten"):
        import_checkpoint(str(unipool_file()), "unipool", f"hf:{hf_wavlm}", None, str(exp))
    assert snapshot(tmp_path / "exp") == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp")]  # no temp dir left


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_exploit_is_refused_and_never_runs(hf_wavlm, tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "model_best.pt"
    torch.save({"model_state": {}, "rand_state": {"np_state": _Payload(marker)}}, src)
    with zipfile.ZipFile(src) as z:  # a real exploit: plain unpickling runs it
        pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    assert marker.exists()
    marker.unlink()
    r = run_module("upmp.bin.import_checkpoint", "--from", src, "--kind", "unipool", "--upstream", f"hf:{hf_wavlm}",
                   "--out", tmp_path / "exp")
    one_line_error(r, "model_best.pt: refused: holds Python objects beyond tensors and plain data "
                      "(it names GLOBAL posix.system)", "keep only its model_state")
    assert not marker.exists() and not (tmp_path / "exp").exists()


@pytest.mark.parametrize("kind", ["unipool", "lap", "ltdnn_d3net"])
def test_imported_experiment_embeds_scores_packages_and_exports(kind, hf_wavlm, small_data_dir, tmp_path):
    """Stages 3-4 (extract_embeddings, score), package_model and export_onnx on an imported dir; the
    package's embeddings equal stage 3's, the ONNX graphs equal torch (export_onnx's own check)."""
    import kaldiio
    from upmp.bin.common import run_main
    from upmp.bin import export_onnx, extract_embeddings, package_model, score
    from upmp.bin import import_checkpoint as import_checkpoint_cli
    from upmp.data.kaldi_dir import DataDir
    from upmp.data.trials import make_balanced_trials, write_kaldi_trials
    from upmp.inference import load_model
    if kind == "unipool":
        src = save_like_unipool_trainer(unipool_model_state(_backbone(hf_wavlm, "backbone."), L=NL), tmp_path / "model_best.pt")
    elif kind == "ltdnn_d3net":
        src = save_like_unipool_trainer(ltdnn_model_state(_backbone(hf_wavlm, "backbone."), kind, L=NL + 1),
                                        tmp_path / "model_best.pt")
    else:
        src = tmp_path / "model.state"
        torch.save(lap_model_state(_backbone(hf_wavlm, "frontend."), L=NL + 1), src)
    exp = tmp_path / "exp" / kind
    run_main(import_checkpoint_cli.main, ["--from", str(src), "--kind", kind, "--upstream", f"hf:{hf_wavlm}", "--out", str(exp)])
    trials = small_data_dir / "trials"
    write_kaldi_trials(str(trials), make_balanced_trials(DataDir.load(small_data_dir).utt2spk, seed=0))
    emb = exp / "embeddings" / "data"
    run_main(extract_embeddings.main, ["--model", str(exp / "model.pt"), "--data_dir", str(small_data_dir), "--upstream",
                                       f"hf:{hf_wavlm}", "--out_dir", str(emb), "--num_threads", "1"])
    run_main(score.main, ["--embeddings", str(emb / "xvector.scp"), "--trials", str(trials), "--out", str(exp / "scores")])
    assert len((exp / "scores").read_text().splitlines()) == len(trials.read_text().splitlines())
    pkg = tmp_path / "models" / kind
    run_main(package_model.main, ["--exp_dir", str(exp), "--out", str(pkg), "--train_embeddings", str(emb / "xvector.scp"),
                                  "--valid_trials", str(trials), "--valid_embeddings", str(emb / "xvector.scp")])
    want = dict(kaldiio.load_scp(str(emb / "xvector.scp")))
    model = load_model(str(pkg))
    utt = sorted(want)[0]
    import soundfile
    wav = soundfile.read(small_data_dir / "wav" / f"{utt}.wav", dtype="float32")[0]
    np.testing.assert_allclose(model.embed_raw([wav])[0], want[utt], atol=1e-4)
    run_main(export_onnx.main, ["--model", str(pkg), "--out", str(tmp_path / "model.onnx"), "--num_threads", "1"])
    side = json.loads((tmp_path / "model.onnx.json").read_text())
    assert set(side["graphs"]) == {"backend", "full"} and all(g["max_abs_diff"] <= 1e-4 for g in side["graphs"].values())
