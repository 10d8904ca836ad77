"""The baseline backends (LAP, SUPERB + ECAPA-TDNN, x-vector) and model_info."""
import re
import subprocess
import sys

import pytest
import torch

from helpers import ROOT
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


def test_lap_is_padding_invariant():
    torch.manual_seed(0)
    m = LAPBackend(16, 4, heads=4, channels=8, embed_dim=6).eval()
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
    r = subprocess.run([sys.executable, "-m", "upmp.bin.model_info", "--config",
                        str(ROOT / "egs/mini/sv1/conf/train_upmp.yaml"), "--input_dim", "768", "--num_layers", "12",
                        "--num_speakers", "1211", "--backend_conf.conv_dim", "128", "--use_hidden0", "false"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^backend_params: 2869476$", r.stdout, re.M)
    assert "loss_head_params: 232512 (aamsoftmax, 1211 speakers)" in r.stdout
    assert "output: (B, E) = (2, 192)" in r.stdout and "12 hidden states used" in r.stdout
    r = subprocess.run([sys.executable, "-m", "upmp.bin.model_info", "--config",
                        str(ROOT / "egs/mini/sv1/conf/train_upmp.yaml"), "--input_dim", "768", "--num_layers", "12",
                        "--backend_conf.conv_dims", "3"], capture_output=True, text=True)
    assert r.returncode == 1 and "unknown config key 'backend_conf.conv_dims'" in r.stderr
