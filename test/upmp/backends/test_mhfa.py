"""The MHFA backend: parameter count, padding neutrality, the attention against a hand-written loop,
layer weightings in layer_usage."""
import numpy as np
import pytest
import torch

from upmp.analysis import layer_usage, plot_layer_usage
from upmp.backends import BACKENDS, SpeakerEmbeddingModel
from upmp.backends.mhfa import MHFABackend


def hand_count(D: int, L: int, c: int, H: int, E: int) -> int:
    layer_logits = 2 * L                  # keys and values
    compression = 2 * (D * c + c)         # two Linear(D, c)
    attention = c * H + H                 # Linear(c, H)
    output = H * c * E + E                # Linear(H * c, E)
    return layer_logits + compression + attention + output


@pytest.mark.parametrize("D, L", [(768, 13), (1024, 25)])
def test_parameter_count_of_the_base_and_large_recipes(D, L):
    m = MHFABackend(D, L)  # defaults: c 128, 64 heads, E 256
    n = sum(p.numel() for p in m.parameters())
    assert n == hand_count(D, L, 128, 64, 256)
    assert n == {768: 2_302_554, 1024: 2_368_114}[D]


def test_in_registry_and_shapes():
    assert BACKENDS["mhfa"] is MHFABackend
    m = SpeakerEmbeddingModel("mhfa", 16, 5, use_hidden0=True,
                              backend_conf=dict(compression_dim=8, heads=4, embed_dim=6)).eval()
    with torch.no_grad():
        assert m(torch.randn(3, 16, 5, 20)).shape == (3, 6)
    assert m.padding_invariant


def test_matches_a_loop_over_heads():
    """Each head: softmax over valid frames of (w_h . K'_t + b_h), weighted sum of V'_t."""
    torch.manual_seed(0)
    D, L, T, c, H = 6, 3, 9, 4, 2
    m = MHFABackend(D, L, compression_dim=c, heads=H, embed_dim=5)
    with torch.no_grad():
        m.key_logits.copy_(torch.tensor([1.0, 0.0, -1.0]))
        m.value_logits.copy_(torch.tensor([0.0, 2.0, 0.5]))
    x = torch.randn(1, D, L, T)
    mask = torch.ones(1, T, dtype=torch.bool)
    mask[0, 7:] = False
    wk = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
    wv = np.exp([0.0, 2.0, 0.5]) / np.exp([0.0, 2.0, 0.5]).sum()
    xs = x[0].double().numpy()  # (D, L, T)
    keys = np.einsum("dlt,l->td", xs, wk) @ m.compress_keys.weight.double().detach().numpy().T \
        + m.compress_keys.bias.double().detach().numpy()
    values = np.einsum("dlt,l->td", xs, wv) @ m.compress_values.weight.double().detach().numpy().T \
        + m.compress_values.bias.double().detach().numpy()
    pooled = []
    for h in range(H):
        logit = keys[:7] @ m.attention.weight[h].double().detach().numpy() + m.attention.bias[h].item()
        a = np.exp(logit - logit.max())
        pooled.append((a / a.sum()) @ values[:7])
    expected = np.concatenate(pooled) @ m.output.weight.double().detach().numpy().T + m.output.bias.double().detach().numpy()
    with torch.no_grad():
        got = m(x, mask)[0].double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_padding_is_neutral():
    torch.manual_seed(0)
    m = MHFABackend(16, 4, compression_dim=8, heads=4, embed_dim=6).eval()
    x = torch.randn(2, 16, 4, 30)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 20:] = False
    x[0, :, :, 20:] = 50.0  # huge padding values must not leak in
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask)[0], m(x[:1, :, :, :20])[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m(x, mask)[1], m(x[1:])[0], atol=1e-5, rtol=1e-5)


def test_layer_weightings_start_uniform_learn_and_are_plotted(tmp_path):
    torch.manual_seed(0)
    model = SpeakerEmbeddingModel("mhfa", 16, 5, use_hidden0=True,
                                  backend_conf=dict(compression_dim=8, heads=4, embed_dim=6))
    torch.testing.assert_close(model.backend.layer_weights(), torch.full((2, 5), 0.2))
    model(torch.randn(4, 16, 5, 30)).pow(2).sum().backward()
    for logits in (model.backend.key_logits, model.backend.value_logits):
        assert logits.grad is not None and logits.grad.abs().sum() > 0
    usage = layer_usage(model, torch.randn(2, 16, 5, 30))
    assert list(usage) == [MHFABackend.LAYER_USAGE_TITLE]
    np.testing.assert_allclose(usage[MHFABackend.LAYER_USAGE_TITLE], np.full((2, 5), 0.2), rtol=1e-6)
    plot_layer_usage(usage, tmp_path / "layer_usage.png")
    assert (tmp_path / "layer_usage.png").stat().st_size > 1000
