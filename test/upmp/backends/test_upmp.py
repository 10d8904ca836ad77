"""The UPMP backend: shapes, masking, the parts' definitions (method.md)."""
import copy

import pytest
import torch

from upmp.backends import SpeakerEmbeddingModel
from upmp.backends.pooling import AttentiveStatisticsPooling, LayerAttentivePooling
from upmp.backends.upmp import LayerwiseAttentiveVAD, UPMPBackend


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


def upmp_params_from_description(D, L, c=128, n_blocks=1, h=4, E=192):
    """Trainable parameters of the backend counted from method.md, term by term."""
    W = 4 * c
    projection = D * W + W + 2 * W                                   # 1x1 conv (bias) + BN2d
    vad = L * L + L * W + L                                          # mixing logits, w_i, b_i
    dense = (W * c + c) + 6 * (2 * c + 9 * c * c + c)                # entry 1x1 + 6 x (BN, 3x3 conv)
    channel_attention = 2 * ((W * c + c) + 2 * c + (c * W + W))      # avg and max MLPs
    block = vad + dense + channel_attention
    Win = W * n_blocks
    layer_mlp = h * (L * (L // 2) + L // 2 + (L // 2) * L + L)
    lap = 2 * Win + Win * W + layer_mlp + W * W + 2 * W              # BN, 1x1 (no bias), MLPs, Conv1d + BN
    asp = (3 * W * (W // 2) + W // 2) + W + (W // 2 * W + W) + 2 * (2 * W) + (2 * W * E + E) + 2 * E
    return projection + n_blocks * block + lap + asp


@pytest.mark.parametrize("n_blocks", [1, 2, 3])
def test_parameter_count_matches_the_description(n_blocks):
    m = UPMPBackend(input_dim=768, num_layers=12, n_blocks=n_blocks)
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert n == upmp_params_from_description(768, 12, n_blocks=n_blocks)


def test_parameter_count_pinned_for_base_upstreams():
    # D = 768, L = 12, defaults: equal to the reference implementation's backend (checked once
    # by instantiating its modules: 1,617,692 + 526,984 + 724,800)
    m = UPMPBackend(input_dim=768, num_layers=12)
    assert sum(p.numel() for p in m.parameters()) == 2_869_476
    # UPMP's own layer attentive pooling stays without biases (unlike the LAP backend's)
    assert m.layer_pooling.proj.bias is None and m.layer_pooling.out[0].bias is None


@pytest.mark.parametrize("name", ["upmp", "lap", "superb_ecapa", "xvector"])
def test_benchmark_reference_formulations_equal_ours(name):
    # benchmarks/backend_step.py times each backend against a straightforward formulation
    # (UPMP: the per-output-layer SUPERB loop of the reference code); same weights, same maths
    from benchmarks.backend_step import SMALL, build, reference_of
    ours = build(name, SMALL)
    for m in ours.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ref = reference_of(name, ours)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    L = 5 if name == "upmp" else 6  # the hidden states each sees in the recipes
    x = torch.randn(4, 32, L, 40)
    mask = torch.ones(4, 40, dtype=torch.bool)
    if name == "upmp":
        with torch.no_grad():  # away from the one-hot start, so the mixing matters
            ours.vads[0].mix_logits.normal_()
            ref.load_from(ours)
    a, b = ours(x, mask), ref(x, mask)  # training mode: batch statistics
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    ga = torch.cat([p.grad.flatten() for p in ours.parameters()]).norm()
    gb = torch.cat([p.grad.flatten() for p in ref.parameters()]).norm()
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    if name == "upmp":  # the mixing logits' gradients, row i = output layer i
        g_ref = torch.stack([s.logits.grad for s in ref.vads[0].superb])
        torch.testing.assert_close(ours.vads[0].mix_logits.grad, g_ref, atol=1e-4, rtol=1e-3)


def test_max_over_layers_has_the_gradient_of_the_plain_formula():
    from upmp.backends.pooling import _MaxOfProduct
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, 4, 5, dtype=torch.double, requires_grad=True)
    s = torch.rand(2, 2, 4, 5, dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(_MaxOfProduct.apply(x, s), (x * s.unsqueeze(2)).max(dim=3).values)
    assert torch.autograd.gradcheck(_MaxOfProduct.apply, (x, s))


def test_traced_graph_keeps_masking_when_traced_without_padding():
    # the ONNX export traces the backend; skipping the masks for an unpadded batch must
    # not be baked into the graph
    m = small().eval()
    x = torch.randn(2, 24, 5, 30)
    full = torch.ones(2, 30, dtype=torch.bool)
    with torch.no_grad():
        traced = torch.jit.trace(m, (x, full), check_trace=False)
        padded = full.clone()
        padded[1, 18:] = False
        torch.testing.assert_close(traced(x, padded), m(x, padded), atol=1e-5, rtol=1e-5)


def _bn(x, bn):
    return torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def plain_blocks(m, x, residual_scale):
    """Steps 1-2 of one UPMP block in eval mode, written out from method.md with the weights of m:
    projection, VAD (L SUPERB sums, per-layer sigmoid frame score), D2 block, channel attention,
    and the block output residual_scale * v + f(v) (1: x + f(x); 2: the authors' 2x + f(x))."""
    F = torch.nn.functional
    x = _bn(F.conv2d(x, m.projection[0].weight, m.projection[0].bias), m.projection[1])
    vad, block = m.vads[0], m.blocks[0]
    mix = torch.softmax(vad.mix_logits, dim=-1)
    xm = torch.einsum("il,bclt->bcit", mix, x)
    s = torch.sigmoid(torch.einsum("ic,bcit->bit", vad.frame_weight, xm) + vad.frame_bias[None, :, None])
    v = xm * s[:, None]
    ys = [F.conv2d(v, block.entry.weight, block.entry.bias)]
    for layer in block.layers:
        out = 0
        for (bn, _, conv), y in zip(layer.branches, ys):
            out = out + F.conv2d(torch.relu(_bn(y, bn)), conv.weight, conv.bias, dilation=conv.dilation,
                                 padding=conv.dilation)
        ys.append(out)
    cat = torch.cat(ys, dim=1)

    def mlp(seq, z):
        h = _bn(torch.relu(F.conv2d(z, seq[0].weight, seq[0].bias)), seq[2])
        return F.conv2d(h, seq[3].weight, seq[3].bias)
    att = block.attention
    scale = torch.sigmoid(mlp(att.mlp_avg, cat.mean(dim=(2, 3), keepdim=True))
                          + mlp(att.mlp_max, cat.amax(dim=(2, 3), keepdim=True)))
    return residual_scale * v + cat * scale


def randomise(m):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else 0.3 * torch.randn(t.shape, generator=g))
    return m


@pytest.mark.parametrize("residual, scale", [("once", 1), ("reference", 2)])
def test_residual_once_or_reference_equals_the_plain_formulation(residual, scale):
    m = randomise(small(residual=residual)).eval()
    x = torch.randn(3, 24, 5, 30)
    with torch.no_grad():
        want = plain_blocks(m, x, scale)
        torch.testing.assert_close(m._block_outputs(x, None), want, atol=1e-5, rtol=1e-5)
        full = torch.ones(3, 30, dtype=torch.bool)
        torch.testing.assert_close(m(x), m.frame_pooling(m.layer_pooling(want, full), full), atol=1e-4, rtol=1e-4)


def test_residual_once_is_the_default_bit_for_bit_and_reference_differs():
    x = torch.randn(2, 24, 5, 30)
    default, once, ref = (randomise(small(**kw)).eval() for kw in ({}, {"residual": "once"}, {"residual": "reference"}))
    with torch.no_grad():
        assert torch.equal(default(x), once(x))
        assert (ref(x) - once(x)).abs().max() > 1e-2


def test_residual_unknown_value_is_one_line():
    from upmp.errors import ConfigError
    with pytest.raises(ConfigError, match="backend_conf.residual: 'twice'; choose from once, reference"):
        small(residual="twice")


def test_pooling_authors_is_masked_in_training_and_unbiased_in_evaluation():
    # the UniPool code passes its mask in training (std / n) and none in evaluation (x.std(), n - 1)
    masked, authors = (small(pooling=p, dropout=0.0).frame_pooling for p in ("masked", "authors"))
    x = 2 * torch.randn(3, 32, 30) + torch.linspace(0, 3, 30)
    with torch.no_grad():
        masked.train(), authors.train()
        torch.testing.assert_close(authors(x), masked(x), atol=1e-5, rtol=1e-5)
        masked.eval(), authors.eval()
        ctx = torch.cat([x, x.mean(-1, keepdim=True).expand(-1, -1, 30), x.std(-1, keepdim=True).expand(-1, -1, 30)], dim=1)
        w = torch.softmax(authors.attention(ctx), dim=-1)
        mu = (w * x).sum(-1)
        sg = ((w * x * x).sum(-1) - mu * mu).clamp(min=1e-4).sqrt()
        want = authors.bn_embed(authors.linear(authors.bn_stats(torch.cat([mu, sg], dim=1))))
        torch.testing.assert_close(authors(x), want, atol=1e-5, rtol=1e-5)
        assert (masked(x) - want).abs().max() > 1e-3  # ours: / n


def test_residual_reference_backward_through_the_fused_path_equals_the_plain_formulation():
    # the training step fuses the residual into the channel attention (addcmul) and runs the layer
    # pooling's custom backward; with residual 2x the gradients equal the plain formulation's
    m = randomise(small(residual="reference", dropout=0.0)).eval()
    x = torch.randn(2, 24, 5, 20, requires_grad=True)
    full = torch.ones(2, 20, dtype=torch.bool)
    grads = []
    for fused in (True, False):
        m.zero_grad()
        x.grad = None
        h = m._block_outputs(x, None) if fused else plain_blocks(m, x, 2)
        m.frame_pooling(m.layer_pooling(h, full), full).pow(2).sum().backward()
        grads.append(torch.cat([x.grad.flatten()] + [p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["upmp", "lap", "ltdnn_d3net", "ltdnn_ecapa"])
def test_training_in_float64_follows_the_plain_formulation_step_by_step(name):
    # Issue 21: the faster formulations (custom max-of-product backward, in-place ReLUs, fused
    # residual, skipped masks) must train exactly as the plain maths does. In float64, where
    # rounding cannot flip which layer or channel wins a max, 12 Adam steps on fresh batches with
    # dropout on (the same draws) give the same losses and then the same eval-mode embeddings as the
    # benchmark's plain formulation; a wrong gradient anywhere moves the weights apart.
    from benchmarks.backend_step import SMALL, build, reference_of
    ours = build(name, SMALL)
    if name == "upmp":
        with torch.no_grad():
            ours.vads[0].mix_logits.normal_()
    ref = reference_of(name, ours).double()  # weights copied in float32, so both start equal
    ours.double()
    if name == "lap":  # its reference lays the layer scores out (B*T, h, 1, L): other dropout draws
        for m in [*ours.modules(), *ref.modules()]:
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    start = copy.deepcopy(ours)
    L = SMALL["num_layers"] + (0 if name == "upmp" else 1)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, SMALL["input_dim"], L, 24, generator=g, dtype=torch.double),
                torch.randn(6, ours.embed_dim, generator=g, dtype=torch.double)) for _ in range(13)]
    mask = torch.ones(6, 24, dtype=torch.bool)
    losses = {}
    for key, model in (("ours", ours), ("plain", ref)):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # Adam would blow up rounding noise
        losses[key] = []
        for step, (x, target) in enumerate(batches[:-1]):
            torch.manual_seed(step)  # the same dropout draws for both
            loss = (model(x, mask) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[key].append(loss.item())
    ours_loss, plain_loss = (torch.tensor(losses[k], dtype=torch.double) for k in ("ours", "plain"))
    torch.testing.assert_close(ours_loss, plain_loss, rtol=1e-9, atol=0)
    with torch.no_grad():
        ours.eval(), ref.eval(), start.eval()
        held_out = batches[-1][0]
        torch.testing.assert_close(ours(held_out, mask), ref(held_out, mask), rtol=1e-9, atol=1e-9)
        assert (ours(held_out, mask) - start(held_out, mask)).abs().max() > 0.1  # the weights did move
