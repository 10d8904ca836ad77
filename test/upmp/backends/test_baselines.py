"""The baseline backends (LAP, SUPERB + ECAPA-TDNN, x-vector) and model_info."""
import re

import pytest
import torch

from helpers import ROOT
import forkserver  # test/forkserver.py
from upmp.backends import BACKENDS, SpeakerEmbeddingModel
from upmp.backends.lap import LAPBackend
from upmp.backends.superb_ecapa import SuperbEcapaBackend
from upmp.backends.xvector import XvectorBackend


@pytest.mark.parametrize("name, conf, out", [
    ("lap", dict(heads=4, channels=16, embed_dim=8), 8),
    ("superb_ecapa", dict(ndim=16, output_size=24, embed_dim=8), 8),
    ("xvector", dict(ndim=16, output_size=24, embed_dim=10), 10),
])
def test_shapes(name, conf, out):
    torch.manual_seed(0)
    m = SpeakerEmbeddingModel(name, 32, 5, use_hidden0=True, backend_conf=conf).eval()
    with torch.no_grad():
        assert m(torch.randn(3, 32, 5, 40), torch.ones(3, 40, dtype=torch.bool)).shape == (3, out)
    assert set(BACKENDS) == {"upmp", "ltdnn_d3net", "ltdnn_ecapa", "lap", "mhfa", "superb_ecapa", "xvector"}


@pytest.mark.parametrize("variant", ["masked", "authors"])
def test_lap_is_padding_invariant(variant):
    torch.manual_seed(0)
    m = LAPBackend(16, 4, heads=4, channels=8, embed_dim=6, variant=variant).eval()
    x = torch.randn(2, 16, 4, 30)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 20:] = False
    x[0, :, :, 20:] = 50.0
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask)[0], m(x[:1, :, :, :20])[0], atol=1e-5, rtol=1e-5)
    assert LAPBackend.padding_invariant and not SuperbEcapaBackend.padding_invariant


def lap_params_from_description(D, L, heads=16, C=512, E=192):
    """LAP + ASTP parameters counted term by term (docs/method.md, "LAP")."""
    k = L // 2
    layer_pooling = 2 * D + (D * D + D) + heads * (L * k + k + k * L + L) + (D * C + C) + 2 * C
    asp = (3 * C * (C // 2) + C // 2) + C + (C // 2 * C + C) + 2 * (2 * C) + (2 * C * E + E) + 2 * E
    return layer_pooling + asp


@pytest.mark.parametrize("D, L, pinned", [(768, 13, 1_714_480), (1024, 25, 2_312_464)])
def test_lap_parameter_count_as_the_follow_up_code(D, L, pinned):
    # both 1x1 convolutions carry biases as in the LAP follow-up's code (Base: 13 hidden
    # states, Large: 25); without them the counts would be 1,280 / 1,536 lower
    n = sum(p.numel() for p in LAPBackend(D, L).parameters())
    assert n == pinned == lap_params_from_description(D, L)
    m = LAPBackend(D, L).layer_pooling
    assert m.proj.bias is not None and m.out[0].bias is not None


def test_superb_weights_start_uniform_and_learn():
    m = SuperbEcapaBackend(16, 5, ndim=16, output_size=24, embed_dim=8)
    torch.testing.assert_close(m.layer_weights(), torch.full((5,), 0.2))
    m(torch.randn(4, 16, 5, 30)).sum().backward()
    assert m.layer_logits.grad is not None and m.layer_logits.grad.abs().sum() > 0


def test_xvector_uses_only_the_chosen_layer():
    torch.manual_seed(0)
    m = XvectorBackend(16, 5, layer=2, ndim=16, output_size=24, embed_dim=8).eval()
    x = torch.randn(2, 16, 5, 30)
    y = x.clone()
    y[:, :, [0, 1, 3, 4]] = torch.randn(2, 16, 4, 30)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(y))
    with pytest.raises(ValueError, match="layer 5 out of range"):
        XvectorBackend(16, 5, layer=5)


def test_model_info_cli():
    r = forkserver.run("upmp.bin.model_info", "--config",
                        str(ROOT / "egs/mini/sv1/conf/train_upmp.yaml"), "--input_dim", "768", "--num_layers", "12",
                        "--num_speakers", "1211", "--backend_conf.conv_dim", "128", "--use_hidden0", "false")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^backend_params: 2869476$", r.stdout, re.M)
    assert "loss_head_params: 232512 (aamsoftmax, 1211 speakers)" in r.stdout
    assert "output: (B, E) = (2, 192)" in r.stdout and "12 hidden states used" in r.stdout
    r = forkserver.run("upmp.bin.model_info", "--config",
                        str(ROOT / "egs/mini/sv1/conf/train_upmp.yaml"), "--input_dim", "768", "--num_layers", "12",
                        "--backend_conf.conv_dims", "3")
    assert r.returncode == 1 and "unknown config key 'backend_conf.conv_dims'" in r.stderr


def _plain_stat_pool(pool, x, mask, keep, unbiased):
    """Attentive statistics pooling written out: context from the valid frames (std / n or / (n - 1)),
    softmax over the kept frames only; pool's batch norms in eval mode."""
    F = torch.nn.functional

    def bn(z, m):
        return F.batch_norm(z, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
    out = []
    for b in range(x.shape[0]):
        xv = x[b][:, mask[b]]
        T = x.shape[2]
        std = xv.std(dim=1, unbiased=unbiased, keepdim=True)
        ctx = torch.cat([x[b], xv.mean(1, keepdim=True).expand(-1, T), std.expand(-1, T)])[None]
        a = pool.attention
        logits = F.conv1d(bn(torch.relu(F.conv1d(ctx, a[0].weight, a[0].bias)), a[2]), a[3].weight, a[3].bias)[0]
        w = torch.softmax(logits[:, keep[b]], dim=1)
        xk = x[b][:, keep[b]]
        mu = (w * xk).sum(1)
        sg = ((w * xk * xk).sum(1) - mu * mu).clamp(min=1e-4).sqrt()
        out.append(bn(pool.linear(bn(torch.cat([mu, sg])[None], pool.bn_stats)), pool.bn_embed)[0])
    return torch.stack(out)


def test_lap_authors_pooling_unbiased_context_and_whole_frames_dropped():
    from upmp.backends.pooling import AttentiveStatisticsPooling
    torch.manual_seed(0)
    pool = AttentiveStatisticsPooling(8, 6, dropout=0.5, context_std="unbiased", frame_dropout=True)
    for m in (pool.attention[2], pool.bn_stats, pool.bn_embed):  # batch norms fixed: the pooling itself in training
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(3, 8, 25)
    mask = torch.ones(3, 25, dtype=torch.bool)
    mask[1, 17:] = False
    with torch.no_grad():
        pool.eval()
        torch.testing.assert_close(pool(x, mask), _plain_stat_pool(pool, x, mask, mask, unbiased=True), atol=1e-5, rtol=1e-5)
        pool.train()
        for m in (pool.attention[2], pool.bn_stats, pool.bn_embed):
            m.eval()
        torch.manual_seed(5)
        got = pool(x, mask)
        torch.manual_seed(5)  # the same draw: each valid frame kept with probability 1 - p, in every channel
        keep = mask & (torch.rand(mask.shape) >= 0.5)
        assert 0 < keep.sum() < mask.sum()
        torch.testing.assert_close(got, _plain_stat_pool(pool, x, mask, keep, unbiased=True), atol=1e-5, rtol=1e-5)


def test_lap_authors_variant_initialises_as_the_lap_code():
    # init_weights of LAP src/model.py: xavier-uniform over each whole tensor of >= 2 dims, zero biases
    torch.manual_seed(0)
    m = LAPBackend(32, 13, heads=4, channels=16, embed_dim=8, variant="authors")
    for name, p in m.named_parameters():
        if name.endswith("bias") or name.rsplit(".", 1)[-1] in ("b1", "b2"):
            assert not p.any(), name
        elif p.dim() > 1:
            fan_in, fan_out = p.shape[1] * p[0][0].numel(), p.shape[0] * p[0][0].numel()
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound, name
        else:
            assert torch.equal(p, torch.ones_like(p)), name  # batch-norm weights
    # the layer MLP: fans over the whole (heads, L, L/2) tensor, not per head as our default
    assert m.layer_pooling.w1.abs().max() <= (6 / (13 * 6 + 4 * 6)) ** 0.5 < (6 / (13 + 6)) ** 0.5


def test_lap_variant_unknown_is_one_line():
    from upmp.errors import ConfigError
    with pytest.raises(ConfigError, match="backend_conf.variant: 'lap'; choose from masked, authors"):
        LAPBackend(16, 4, variant="lap")
