"""The Layer-aware TDNN backends (upmp/backends/ltdnn.py): parameter counts, padding neutrality,
the test-time context std, layer usage, and the key mapping from the authors' checkpoints."""
import numpy as np
import pytest
import torch

from upmp.backends import BACKENDS, SpeakerEmbeddingModel
from upmp.backends.ltdnn import LTDNND3NetBackend, LTDNNEcapaBackend
from upmp.errors import ModelFileError

SMALL = {"ltdnn_d3net": dict(conv_dim=8, n_blocks=2, depth=4, se_channels=4, hidden=8, heads=2, embed_dim=6),
         "ltdnn_ecapa": dict(conv_dim=8, scale=4, se_channels=4, hidden=8, heads=2, embed_dim=6)}


# ---------------------------------------------------------------- parameter counts, term by term
def conv(cin, cout, kl=1, kt=1, bias=True):
    return cin * cout * kl * kt + (cout if bias else 0)


def bn(c):
    return 2 * c


def poolings(width, L, H=512, heads=8, E=192):
    k = L // 2
    layer = bn(width) + conv(width, H, bias=False) + heads * (L * k + k + k * L + L) + conv(H, H, bias=False) + bn(H)
    frames = conv(3 * H, H // 2) + bn(H // 2) + conv(H // 2, H) + bn(2 * H) + (2 * H * E + E) + bn(E)
    return layer + frames


def d3net_count(D, L, C=256, n_blocks=3, depth=4, se=128):
    stem = bn(D) + conv(D, C, 1, 5) + bn(C)
    widths = [C - d * C // depth for d in range(depth)]              # 256, 192, 128, 64
    block = sum(conv(w, w, 3, 3) + bn(w) for w in widths) + conv(C, se) + conv(se, C)
    fusion = conv(n_blocks * C, n_blocks * C)
    return stem + n_blocks * block + fusion + poolings(n_blocks * C, L)


def ecapa_count(D, L, C=256, scale=8, se=128):
    stem = bn(D) + conv(D, C, 5, 3) + bn(C)
    w = C // scale
    block = 2 * (conv(C, C) + bn(C)) + (scale - 1) * (conv(w, w, 3, 3) + bn(w)) + conv(C, se) + conv(se, C)
    return stem + 3 * block + conv(3 * C, 3 * C) + poolings(3 * C, L)


@pytest.mark.parametrize("name, D, L, pinned", [
    ("ltdnn_d3net", 768, 13, 6_481_336), ("ltdnn_d3net", 1024, 25, 6_813_224),
    ("ltdnn_ecapa", 768, 13, 5_717_272), ("ltdnn_ecapa", 1024, 25, 6_704_520)])
def test_parameter_counts_of_the_papers_base_and_large(name, D, L, pinned):
    # defaults = the authors' v2 settings; all hidden states (Base 13, Large 25); no loss head
    with torch.device("meta"):
        m = BACKENDS[name](D, L)
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert n == pinned == (d3net_count if name == "ltdnn_d3net" else ecapa_count)(D, L)


# ---------------------------------------------------------------- behaviour
def small(name, D=12, L=5, **conf):
    torch.manual_seed(0)
    m = BACKENDS[name](D, L, **dict(SMALL[name], **conf))
    with torch.no_grad():  # batch-norm statistics as after training
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("name", ["ltdnn_d3net", "ltdnn_ecapa"])
def test_padded_batch_equals_one_at_a_time(name):
    m = small(name)
    assert m.padding_invariant and SpeakerEmbeddingModel(name, 12, 5, True, SMALL[name]).padding_invariant
    lengths = [40, 31, 17, 6]  # dilations up to 8 frames reach into the padding of the short ones
    x = torch.randn(4, 12, 5, 40)
    mask = torch.arange(40)[None] < torch.tensor(lengths)[:, None]
    padded = x.masked_fill(~mask[:, None, None, :], 50.0)  # large padding values must not leak in
    with torch.no_grad():
        batch = m(padded, mask)
        alone = torch.cat([m(x[i:i + 1, :, :, :n]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_test_time_context_std_is_the_unbiased_one_by_default():
    # the authors pool without a mask at test time (torch's x.std(), n - 1), with the crop mask in training (n)
    m = small("ltdnn_d3net")
    pool = m.frame_pooling
    assert pool.context_std == "unbiased_in_eval"
    assert small("ltdnn_d3net", eval_std="biased").frame_pooling.context_std == "population"
    x = torch.randn(2, 8, 7)
    seen = {}
    hook = pool.attention.register_forward_hook(lambda mod, inp, out: seen.update(context=inp[0]))
    with torch.no_grad():
        pool(x)
        torch.testing.assert_close(seen["context"][:, 16:, 0], x.std(dim=2))
        pool.train()
        pool(x)
        torch.testing.assert_close(seen["context"][:, 16:, 0], x.std(dim=2, unbiased=False))
    hook.remove()


@pytest.mark.parametrize("name", ["ltdnn_d3net", "ltdnn_ecapa"])
def test_trains_every_parameter_and_reports_layer_usage(name, tmp_path):
    from upmp.analysis import layer_usage, plot_layer_usage
    model = SpeakerEmbeddingModel(name, 12, 5, use_hidden0=True, backend_conf=SMALL[name])
    model(torch.randn(3, 12, 5, 20)).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    usage = layer_usage(model, torch.randn(2, 12, 5, 20))
    scores = usage["layer attention score (row: head)"]
    assert scores.shape == (2, 5) and np.all((scores > 0) & (scores < 1))
    plot_layer_usage(usage, tmp_path / "layer_usage.png")
    assert (tmp_path / "layer_usage.png").stat().st_size > 1000


def test_initialised_as_the_authors():
    m = LTDNND3NetBackend(12, 5, **SMALL["ltdnn_d3net"])
    net = [m.stem, m.blocks, m.fusion]
    assert all(p.abs().sum() == 0 for mod in net for n, p in mod.named_parameters() if n.endswith("conv.bias"))
    assert m.fusion.bias.abs().sum() == 0 and m.blocks[0].se.squeeze.bias.abs().sum() == 0
    w = m.blocks[0].steps[0].conv.weight  # xavier-uniform: bound sqrt(6 / (fan_in + fan_out))
    fan = w.shape[1] * 9 + w.shape[0] * 9
    assert w.abs().max() <= (6 / fan) ** 0.5 and w.abs().max() > 0.8 * (6 / fan) ** 0.5


# ---------------------------------------------------------------- the authors' checkpoint layout
def bn_keys(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def cbr_keys(prefix, cin, cout, kl, kt):
    return {f"{prefix}.conv.weight": (cout, cin, kl, kt), f"{prefix}.conv.bias": (cout,), **bn_keys(f"{prefix}.bn", cout)}


def se_keys(prefix, c, se):
    return {f"{prefix}.se_attention.1.weight": (se, c, 1, 1), f"{prefix}.se_attention.1.bias": (se,),
            f"{prefix}.se_attention.3.weight": (c, se, 1, 1), f"{prefix}.se_attention.3.bias": (c,)}


def authors_layout(name, D, L, conf):
    """The key -> shape of the authors' `encoder.*` (prefix stripped), as their model files name them."""
    C, se, H, h, E = conf["conv_dim"], conf["se_channels"], conf["hidden"], conf["heads"], conf["embed_dim"]
    keys = {**bn_keys("net.in_conv.0", D),
            **cbr_keys("net.in_conv.1", D, C, *((1, 5) if name == "ltdnn_d3net" else (5, 3)))}
    if name == "ltdnn_d3net":
        n = conf["n_blocks"]
        for b in range(n):
            for d in range(conf["depth"]):
                w = C - d * C // conf["depth"]
                keys.update(cbr_keys(f"net.se_d2blocks.{b}.layers.{d}", w, w, 3, 3))
            keys.update(se_keys(f"net.se_d2blocks.{b}.se", C, se))
    else:
        n, w = 3, C // conf["scale"]
        for b in (1, 2, 3):
            p = f"net.block{b}.se_res2block"
            keys.update({**cbr_keys(f"{p}.0", C, C, 1, 1), **cbr_keys(f"{p}.2", C, C, 1, 1), **se_keys(f"{p}.3", C, se)})
            for i in range(conf["scale"] - 1):
                keys.update(cbr_keys(f"{p}.1.convs.{i}", w, w, 3, 3))
    keys.update({"net.fusion.0.weight": (n * C, n * C, 1, 1), "net.fusion.0.bias": (n * C,)})
    keys.update({**bn_keys("l_pool.in_projection.0", n * C), "l_pool.in_projection.1.weight": (H, n * C, 1, 1),
                 "l_pool.W1": (h, L, L // 2), "l_pool.b1": (h, 1, L // 2), "l_pool.W2": (h, L // 2, L),
                 "l_pool.b2": (h, 1, L), "l_pool.out_projection.0.weight": (H, H, 1),
                 **bn_keys("l_pool.out_projection.1", H)})
    keys.update({"t_pool.attention.0.weight": (H // 2, 3 * H, 1), "t_pool.attention.0.bias": (H // 2,),
                 **bn_keys("t_pool.attention.2", H // 2), "t_pool.attention.3.weight": (H, H // 2, 1),
                 "t_pool.attention.3.bias": (H,), **bn_keys("t_pool.attn_norm", 2 * H),
                 "t_pool.out_proj.weight": (E, 2 * H), "t_pool.out_proj.bias": (E,), **bn_keys("t_pool.out_norm", E)})
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked")
                else torch.randn(s, generator=g)) for k, s in keys.items()}


@pytest.mark.parametrize("name", ["ltdnn_d3net", "ltdnn_ecapa"])
def test_authors_state_maps_onto_ours(name):
    cls = BACKENDS[name]
    theirs = authors_layout(name, 12, 5, SMALL[name])
    conf = cls.authors_conf(theirs)
    assert conf == dict(input_dim=12, num_layers=5, backend_conf={k: v for k, v in SMALL[name].items()})
    m = cls(conf["input_dim"], conf["num_layers"], **conf["backend_conf"])
    m.load_state_dict(cls.from_authors_state(theirs))  # strict: every key of ours filled
    assert m.stem.conv.weight.equal(theirs["net.in_conv.1.conv.weight"])
    assert m.layer_pooling.b1.equal(theirs["l_pool.b1"][:, 0]) and m.layer_pooling.w2.equal(theirs["l_pool.W2"])
    assert m.frame_pooling.bn_stats.running_var.equal(theirs["t_pool.attn_norm.running_var"])
    if name == "ltdnn_d3net":
        assert m.blocks[1].steps[3].bn.weight.equal(theirs["net.se_d2blocks.1.layers.3.bn.weight"])
        assert m.blocks[1].se.excite.bias.equal(theirs["net.se_d2blocks.1.se.se_attention.3.bias"])
    else:
        assert m.blocks[2].res2.convs[2].conv.weight.equal(theirs["net.block3.se_res2block.1.convs.2.conv.weight"])
        assert m.blocks[0].exit.bn.running_mean.equal(theirs["net.block1.se_res2block.2.bn.running_mean"])


@pytest.mark.parametrize("fault, message", [
    ("missing", "encoder.net.fusion.0.bias is missing"),
    ("shape", r"encoder.t_pool.out_norm.weight has shape \(5,\), ltdnn_d3net needs \(6,\)"),
    ("extra", "encoder.attn_vad.weight is not part of ltdnn_d3net"),
    ("other kind", "encoder.net.se_d2blocks.0.se.se_attention.1.weight is missing")])
def test_authors_state_that_does_not_fit_names_the_key(fault, message):
    theirs = authors_layout("ltdnn_d3net", 12, 5, SMALL["ltdnn_d3net"])
    if fault == "missing":
        del theirs["net.fusion.0.bias"]
    elif fault == "shape":
        theirs["t_pool.out_norm.weight"] = torch.zeros(5)
    elif fault == "extra":
        theirs["attn_vad.weight"] = torch.zeros(3)
    else:
        theirs = authors_layout("ltdnn_ecapa", 12, 5, SMALL["ltdnn_ecapa"])
    with pytest.raises(ModelFileError, match=message) as e:
        LTDNND3NetBackend.from_authors_state(theirs)
    assert "\n" not in str(e.value)


def test_ecapa_refuses_a_d3net_state():
    with pytest.raises(ModelFileError, match="encoder.net.block1.se_res2block.1.convs.0.conv.weight is missing"):
        LTDNNEcapaBackend.from_authors_state(authors_layout("ltdnn_d3net", 12, 5, SMALL["ltdnn_d3net"]))


# ---------------------------------------------------------------- train, embed, score, package, export
@pytest.mark.parametrize("name", ["ltdnn_d3net", "ltdnn_ecapa"])
def test_trains_embeds_scores_packages_and_exports(name, tmp_path):
    """Stages 2-3, scoring, package_model and export_onnx in-process on a tiny GE2E corpus."""
    import json

    import kaldiio
    import yaml

    from helpers import TRAIN_CONFIG, write_data_dir
    from upmp.bin import export_onnx, extract_embeddings, package_model, score, train
    from upmp.bin.common import run_main
    from upmp.data.kaldi_dir import DataDir
    from upmp.data.trials import make_balanced_trials, write_kaldi_trials
    from upmp.inference import load_model
    utts = {f"spk{s}-utt{u}": (f"spk{s}", 0.6 + 0.2 * u + 0.1 * s, 150 + 90 * s + 9 * u) for s in range(3) for u in range(3)}
    data = write_data_dir(tmp_path / "data", utts)
    write_kaldi_trials(str(data / "trials"), make_balanced_trials(DataDir.load(data).utt2spk, seed=0))
    cfg = dict(TRAIN_CONFIG, backend=name, backend_conf=SMALL[name],
               train_conf=dict(TRAIN_CONFIG["train_conf"], steps=6, crop_seconds=0.5, valid_every=6, log_every=3,
                               ckpt_every=6))
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(cfg))
    exp, emb = tmp_path / "exp", tmp_path / "exp" / "embeddings" / "data"
    run_main(train.main, ["--config", str(tmp_path / "conf.yaml"), "--train_data_dir", str(data), "--upstream", "ge2e",
                          "--valid_data_dir", str(data), "--valid_trials", str(data / "trials"), "--exp_dir", str(exp)])
    assert yaml.safe_load((exp / "config.yaml").read_text())["backend_conf"] == dict(SMALL[name], dropout=0.1,
                                                                                      eval_std="unbiased")
    run_main(extract_embeddings.main, ["--model", str(exp / "model.pt"), "--data_dir", str(data), "--upstream", "ge2e",
                                       "--out_dir", str(emb), "--num_threads", "1"])
    stage3 = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(emb / "xvector.scp")).items()}
    assert sorted(stage3) == sorted(utts) and all(v.shape == (6,) for v in stage3.values())
    run_main(score.main, ["--embeddings", str(emb / "xvector.scp"), "--trials", str(data / "trials"),
                          "--out", str(tmp_path / "scores")])
    rows = [line.split() for line in (tmp_path / "scores").read_text().splitlines()]
    trials = [line.split() for line in (data / "trials").read_text().splitlines()]
    assert [r[:2] for r in rows] == [t[:2] for t in trials]
    a, b = stage3[rows[0][0]], stage3[rows[0][1]]
    assert float(rows[0][2]) == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)
    run_main(package_model.main, ["--exp_dir", str(exp), "--out", str(tmp_path / "pkg")])
    model = load_model(str(tmp_path / "pkg"))
    names = ["spk0-utt2", "spk1-utt0", "spk2-utt1"]  # different lengths: one padded batch
    got = model.embed_raw([data / "wav" / f"{u}.wav" for u in names])
    np.testing.assert_allclose(np.stack(got), np.stack([stage3[u] for u in names]), atol=1e-5)
    run_main(export_onnx.main, ["--model", str(tmp_path / "pkg"), "--out", str(tmp_path / "model.onnx"),
                                "--num_threads", "1"])
    side = json.loads((tmp_path / "model.onnx.json").read_text())
    assert set(side["graphs"]) == {"backend", "full"} and all(g["max_abs_diff"] <= 1e-4 for g in side["graphs"].values())


@pytest.mark.parametrize("name", ["ltdnn_d3net", "ltdnn_ecapa"])
def test_recipes_train_the_authors_v2_settings(name):
    import dataclasses

    from helpers import ROOT
    from upmp.train.schema import backend_conf_class, resolve_train_config
    authors = dict(conv_dim=256, se_channels=128, hidden=512, heads=8, embed_dim=192, dropout=0.1, eval_std="unbiased",
                   **(dict(n_blocks=3, depth=4) if name == "ltdnn_d3net" else dict(scale=8)))
    assert {f.name: f.default for f in dataclasses.fields(backend_conf_class(name))} == authors
    for corpus in ("vctk", "librispeech", "voxceleb1", "voxceleb2"):
        cfg = resolve_train_config(str(ROOT / "egs" / corpus / "sv1" / "conf" / f"train_{name}.yaml"))
        assert (cfg.backend, cfg.use_hidden0, dataclasses.asdict(cfg.backend_conf), cfg.optim_conf.lr) == \
            (name, True, authors, 3e-3), corpus
    mini = resolve_train_config(str(ROOT / "egs" / "mini" / "sv1" / "conf" / f"train_{name}.yaml"))
    assert mini.backend == name and mini.use_hidden0 and mini.backend_conf.conv_dim < 256


@pytest.mark.parametrize("name", ["ltdnn_d3net", "ltdnn_ecapa"])
def test_benchmark_plain_formulation_equals_ours(name):
    # benchmarks/backend_step.py times each backend against a straightforward formulation
    from benchmarks.backend_step import SMALL as SIZE
    from benchmarks.backend_step import build, reference_of
    ours = build(name, SIZE)
    for m in ours.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ref = reference_of(name, ours)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.randn(4, 32, 6, 40)
    mask = torch.ones(4, 40, dtype=torch.bool)
    a, b = ours(x, mask), ref(x, mask)  # training mode: batch statistics
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    grads = dict(ref.named_parameters())  # the same names (the reference copies our modules)
    for key, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[key].grad, rtol=1e-3, atol=1e-5, msg=key)
    ours.eval(), ref.eval()
    mask[1, 25:] = False
    with torch.no_grad():
        torch.testing.assert_close(ours(x, mask), ref(x, mask), atol=1e-5, rtol=1e-5)
