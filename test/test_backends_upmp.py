"""The UPMP backend: shapes, masking, the parts' definitions (method.md)."""
import pytest
import torch

from upmp.backends import SpeakerEmbeddingModel
from upmp.backends.pooling import AttentiveStatisticsPooling
from upmp.backends.upmp import LayerAttentivePooling, LayerwiseAttentiveVAD, UPMPBackend


def small(**kw):
    torch.manual_seed(0)
    return UPMPBackend(input_dim=24, num_layers=5, conv_dim=8, heads=4, embed_dim=16, **kw)


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_shapes(n_blocks):
    m = small(n_blocks=n_blocks)
    assert m(torch.randn(3, 24, 5, 40)).shape == (3, 16)


def test_padding_does_not_change_embeddings():
    m = small(n_blocks=2).eval()
    x = torch.randn(2, 24, 5, 60)
    mask = torch.ones(2, 60, dtype=torch.bool)
    mask[1, 35:] = False
    x[1, :, :, 35:] = 100.0  # garbage in the padding must not leak
    with torch.no_grad():
        batched = m(x, mask)
        alone = m(x[1:, :, :, :35])
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=1e-5)


def test_vad_starts_as_superb_one_hot_mixing_and_zeroes_padding():
    vad = LayerwiseAttentiveVAD(channels=6, num_layers=3)
    mix = torch.softmax(vad.mix_logits, dim=-1)
    e = torch.e
    assert mix[1, 1].item() == pytest.approx(e / (e + 2))
    x = torch.randn(2, 6, 3, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:] = False
    y = vad(x, mask)
    assert torch.all(y[0, :, :, 7:] == 0)
    # with identity mixing, output = x * sigmoid(w_i . x_i + b_i)
    with torch.no_grad():
        vad.mix_logits.copy_(torch.eye(3) * 50)
    y = vad(x, torch.ones(2, 10, dtype=torch.bool))
    s = torch.sigmoid(torch.einsum("bclt,lc->blt", x, vad.frame_weight) + vad.frame_bias[None, :, None])
    torch.testing.assert_close(y, x * s[:, None], atol=1e-5, rtol=1e-5)


def test_layer_attentive_pooling_maxes_over_layers():
    lap = LayerAttentivePooling(in_channels=8, channels=8, num_layers=4, heads=2).eval()
    x = torch.randn(2, 8, 4, 7)
    out = lap(x, torch.ones(2, 7, dtype=torch.bool))
    assert out.shape == (2, 8, 7)
    with pytest.raises(ValueError, match="divisible by heads"):
        LayerAttentivePooling(8, 6, 4, heads=4)


def test_attentive_statistics_pooling_masked():
    asp = AttentiveStatisticsPooling(channels=8, embed_dim=4).eval()
    x = torch.randn(1, 8, 20)
    padded = torch.cat([x, torch.randn(1, 8, 5) * 50], dim=2)
    mask = torch.zeros(1, 25, dtype=torch.bool)
    mask[0, :20] = True
    torch.testing.assert_close(asp(padded, mask), asp(x), atol=1e-5, rtol=1e-5)


def test_hidden_state_selection():
    m = SpeakerEmbeddingModel("upmp", 24, 6, use_hidden0=False, backend_conf=dict(conv_dim=8, embed_dim=16))
    assert m.backend.vads[0].mix_logits.shape == (5, 5)
    assert m(torch.randn(2, 24, 6, 30)).shape == (2, 16)
    m = SpeakerEmbeddingModel("upmp", 24, 6, use_hidden0=True, backend_conf=dict(conv_dim=8, embed_dim=16))
    assert m.backend.vads[0].mix_logits.shape == (6, 6)
    with pytest.raises(ValueError, match="unknown backend 'ecapa'"):
        SpeakerEmbeddingModel("ecapa", 24, 6)


def test_gradients_reach_every_parameter():
    m = small()
    m(torch.randn(4, 24, 5, 30)).pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
