"""int8 layer stacks (round trip within the quantisation bound, crops by offset, refusals of a cut-off
or foreign cache) and layer subsets (--layers forms; a model trained on a subset embeds with it)."""
import kaldiio
import numpy as np
import pytest
import torch
import yaml

from helpers import TRAIN_CONFIG, one_line_error
from upmp.data.layer_stacks import LayerStackMeta, LayerStackWriter, MatrixReader, load_stack, parse_layers
from upmp.data.layout import stack_to_matrix
from upmp.errors import ConfigError, DataDirError, UpstreamError


def _stacks(rng, L=3, D=16):
    """Rows of very different scales and offsets, one constant row and one all-zero row."""
    stacks = {}
    for i, (scale, shift) in enumerate([(1.0, 0.0), (300.0, 40.0), (1e-3, -5.0), (0.02, 1e4)]):
        x = rng.normal(size=(L, 23 + 5 * i, D)) * scale + shift
        x[:, 0] += rng.normal(size=(L, D)) * 50  # an outlier frame
        stacks[f"u{i}"] = x.astype(np.float32)
    stacks["u1"][1, 3] = 7.25   # constant row
    stacks["u2"][0, 4] = 0.0    # zero row
    return stacks


def _write(path, stacks, storage="int8"):
    with LayerStackWriter(str(path), storage) as w:
        for utt, x in stacks.items():
            w.write(utt, x)
    return dict(line.split() for line in open(f"{path}.scp"))


def test_int8_round_trip_within_the_quantisation_bound(tmp_path):
    rng = np.random.default_rng(0)
    stacks = _stacks(rng)
    entries = _write(tmp_path / "l", stacks)
    for utt, x in stacks.items():
        got = load_stack(entries[utt], 3)
        err = np.abs(got.astype(np.float64) - x).max(axis=-1)                  # (L, T) per row
        # the bound from the data alone: half a step of 127 levels over the row's half-range, the
        # float16 roundings of offset (2^-11 relative) and scale (one float16 step up, 2^-10), and
        # float32 arithmetic in the widening
        lo, hi = x.min(axis=-1).astype(np.float64), x.max(axis=-1).astype(np.float64)
        half = (hi - lo) / 2 + np.abs((hi + lo) / 2) * 2.0 ** -11
        bound = half / 127 * (1 + 2.0 ** -9) / 2 + 6e-8 + np.abs(x).max(axis=-1) * 2e-7
        assert (err <= bound).all(), (utt, (err / bound).max())
        # and within half the stored scale of each row (kaldiio reads the records as they are)
        rec = kaldiio.load_mat(entries[utt])
        assert rec.shape == (x.shape[1], 3) and rec.dtype.names == ("scale", "offset", "codes")
        scale = rec["scale"].astype(np.float64).T                                # (L, T)
        assert (err <= scale / 2 + np.abs(x).max(axis=-1) * 2e-7 + 1e-12).all()
    assert np.array_equal(load_stack(entries["u1"], 3)[1, 3], np.full(16, 7.25, np.float32))
    assert not load_stack(entries["u2"], 3)[0, 4].any()
    # a quarter of float32 plus 4 bytes a row (scale, offset) and the per-utterance headers
    raw = sum(x.nbytes for x in stacks.values())
    rows = sum(x.shape[0] * x.shape[1] for x in stacks.values())
    assert (tmp_path / "l.ark").stat().st_size <= raw / 4 + 4 * rows + 250 * len(stacks)


def test_int8_crops_read_by_offset_equal_whole_reads(tmp_path):
    from upmp.train.data import LayerStackCrops, to_model_input
    rng = np.random.default_rng(1)
    stacks = _stacks(rng)
    entries = _write(tmp_path / "l", stacks)
    reader = MatrixReader(list(entries.values()), source="l.scp")
    for i, utt in enumerate(entries):
        whole = reader.read_float(i)
        np.testing.assert_array_equal(whole, stack_to_matrix(load_stack(entries[utt], 3)))
        T = reader.rows(i)
        for start, n in ((0, 1), (3, 7), (T - 5, 5)):
            before = reader.bytes_read
            np.testing.assert_array_equal(reader.read_float(i, start, n), whole[start:start + n])
            assert reader.bytes_read - before == n * 3 * (16 + 4)  # only the crop's rows
    (tmp_path / "utt2spk").write_text("".join(f"{u} s{k % 2}\n" for k, u in enumerate(entries)))
    crops = {p: LayerStackCrops(str(tmp_path / "l.scp"), str(tmp_path / "utt2spk"), 3, 20, 4, 0, preload=p)
             for p in (False, True)}
    raw, labels = crops[False].raw_batch(2)
    assert raw.dtype == torch.uint8 and raw.shape == (4, 20, 3, 20)  # 4 + D bytes a row until the device
    x = to_model_input(raw, "cpu")
    assert x.dtype == torch.float32 and x.shape == (4, 16, 3, 20)
    torch.testing.assert_close(to_model_input(crops[True].raw_batch(2)[0], "cpu"), x, rtol=0, atol=0)
    from upmp.train.data import widen_int8_torch   # what a GPU runs: the same numbers
    torch.testing.assert_close(widen_int8_torch(raw), x, rtol=0, atol=0)
    c = crops[False]
    index = c.step_rows(2, range(4))
    from upmp.train.data import crop_start
    for row, i in enumerate(index):  # each crop is those frames of the whole stack
        i = int(i)
        start = crop_start(np.random.default_rng([c.seed, 2, row]), c.reader.rows(i), 20)
        whole = load_stack(entries[c.utts[i]], 3)  # (L, T, D)
        np.testing.assert_array_equal(x[row].numpy(), whole[:, start:start + 20].transpose(2, 0, 1))


def test_corrupted_or_mismatched_int8_cache_is_refused_in_one_line(tmp_path, capsys):
    from upmp.train.data import LayerStackCrops
    rng = np.random.default_rng(2)
    entries = _write(tmp_path / "l", _stacks(rng))
    ark = tmp_path / "l.ark"
    data = ark.read_bytes()
    (tmp_path / "utt2spk").write_text("".join(f"{u} s\n" for u in entries))
    # a layer count that is not the stacks'
    with pytest.raises(DataDirError, match=r"l.scp: utterance u0: matrix width 48 is not 4 layers"):
        LayerStackCrops(str(tmp_path / "l.scp"), str(tmp_path / "utt2spk"), 4, 10, 2, 0, preload=False)
    with pytest.raises(DataDirError, match=r"int8 stack of shape \(23, 3\), not \(T, 4 hidden states\)"):
        load_stack(entries["u0"], 4)
    # cut off inside the last matrix: refused when the reader opens, naming the ark
    ark.write_bytes(data[:-10])
    with pytest.raises(DataDirError, match=rf"l.scp: entry '{ark}:\d+': {ark} is truncated \(the matrix ends at byte "
                                           rf"{len(data)}, the file at {len(data) - 10}\); re-extract") as e:
        MatrixReader(list(entries.values()), source="l.scp")
    assert "\n" not in str(e.value)
    with pytest.raises(DataDirError, match=rf"{ark}:\d+: not a readable layer stack"):
        load_stack(entries["u3"], 3)
    # a foreign header where an entry points
    offset = int(entries["u1"].rpartition(":")[2])
    ark.write_bytes(data[:offset] + b"XYZ" + data[offset + 3:])
    with pytest.raises(DataDirError, match=rf"entry '{ark}:{offset}': no matrix header at that offset of {ark}"):
        MatrixReader(list(entries.values()), source="l.scp")
    # numpy records that are not int8 stacks
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/r.ark,{tmp_path}/r.scp", write_function="numpy") as w:
        w("u", np.zeros((4, 3), dtype=[("scale", "<f4"), ("codes", "i1", (8,))]))
    entry = (tmp_path / "r.scp").read_text().split()[1]
    with pytest.raises(DataDirError, match=r"are not an int8 layer stack \(scale <f2, offset <f2, codes i1 x D\)"):
        MatrixReader([entry], source="r.scp")
    with pytest.raises(DataDirError, match=r"are not an int8 layer stack"):
        load_stack(entry, 3)
    # through an entry point (in this process): exit 1, one line naming the ark
    from types import SimpleNamespace
    from upmp.bin import train
    from upmp.bin.common import run_main
    ark.write_bytes(data[:-10])
    LayerStackMeta(3, 16, 0.02, "test", "int8").write(str(tmp_path))
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(dict(TRAIN_CONFIG, train_conf=dict(
        TRAIN_CONFIG["train_conf"], preload=False))))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(train.main, ["--config", str(tmp_path / "conf.yaml"), "--train_scp", str(tmp_path / "l.scp"),
                              "--utt2spk", str(tmp_path / "utt2spk"), "--exp_dir", str(tmp_path / "exp")])
    r = SimpleNamespace(returncode=exit_.value.code, stdout="", stderr=capsys.readouterr().err)
    one_line_error(r, f"{ark} is truncated", "re-extract the layer stacks (stage 1)")


def test_int8_refuses_values_float16_cannot_hold():
    from upmp.upstream.extract import check_stack
    with pytest.raises(UpstreamError, match="beyond float16's 65504: stored as int8 it would be inf; use --storage float32"):
        check_stack(np.full((2, 3), 7e4, np.float32), "u", "up", "int8")


def test_layers_forms(tmp_path):
    assert parse_layers("all") is None
    assert parse_layers("0-12") == list(range(13))
    assert parse_layers("0,4,8,12") == [0, 4, 8, 12]
    assert parse_layers("8, 0-2") == [0, 1, 2, 8]
    assert parse_layers("3", 4) == [3]
    probe = tmp_path / "layer_probe.tsv"
    probe.write_text("layer\teer_cosine\teer_plda\n0\t30.0\t20.0\n1\t10.0\t5.0\n2\t12.0\t5.0\n3\t9.0\t8.0\n"
                     "average\t11.0\t6.0\n")
    assert parse_layers(f"top:2:{probe}") == [1, 2]   # lowest PLDA EER; 1 before 2 on cosine
    assert parse_layers(f"top:3:{probe}") == [1, 2, 3]
    usage = tmp_path / "layer_usage.tsv"
    usage.write_text("layer\tusage\n1\t0.1\n2\t0.5\n3\t0.4\n")
    assert parse_layers(f"top:2:{usage}") == [2, 3]
    for bad, message in [("", r"'' is not a hidden-state index nor a range a-b; give all, 0-12"),
                         ("0-x", r"'0-x' is not a hidden-state index"), ("-3", r"'-3' is not"),
                         ("1,,2", r"'' is not"), ("5-2", r"range 5-2 runs backwards; write 2-5"),
                         ("0-3,2", r"hidden state 2 is named twice"),
                         ("0-13", r"hidden state 13 is beyond the upstream's 13 \(0-12, 0 = the CNN output\)"),
                         ("top:0:x", r"top needs a count and a file"), ("top:2", r"top needs a count and a file"),
                         (f"top:5:{probe}", r"ranks 4 hidden states, fewer than 5"),
                         (f"top:2:{tmp_path}/none.tsv", r"none.tsv not found"),
                         (f"top:1:{tmp_path / 'conf'}", r"not found")]:
        with pytest.raises(ConfigError, match=r"--layers" + (f" '{bad}'" if "top:" not in bad else "") + ".*" + message):
            parse_layers(bad, 13)
    (tmp_path / "bad.tsv").write_text("layer\teer\n0\t1\n")
    with pytest.raises(ConfigError, match=r"bad.tsv is not a layer_probe.tsv \(columns layer, eer_cosine, eer_plda\)"):
        parse_layers(f"top:1:{tmp_path / 'bad.tsv'}")


def test_a_model_trained_on_a_layer_subset_embeds_with_it(tmp_path, small_data_dir, tiny_wavlm, monkeypatch):
    """Stage 1 with --layers 1,2 (no hidden state 0) records the subset; a model trained on those
    stacks sees both stored layers even without use_hidden0, embeds the same from cached stacks
    and from the upstream run online, and stacks of other layers are refused in one line."""
    from upmp.bin import extract_embeddings, extract_layers, train
    from upmp.checkpoint import load_model
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    up = ["--upstream", "wavlm_local", "--upstream_ckpt", str(tiny_wavlm)]
    for name, layers in (("sub", "1,2"), ("other", "0-1")):
        extract_layers.main(["--data_dir", str(small_data_dir), "--out_prefix", str(tmp_path / name / "layers"),
                             "--layers", layers, "--storage", "float32", *up])
    meta = LayerStackMeta.read(str(tmp_path / "sub"))
    assert (meta.num_layers, meta.layers) == (2, [1, 2])
    cfg = dict(TRAIN_CONFIG, use_hidden0=False, train_conf=dict(TRAIN_CONFIG["train_conf"], steps=2, ckpt_every=2,
                                                               crop_seconds=0.2))
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(cfg))
    train.main(["--config", str(tmp_path / "conf.yaml"), "--train_scp", str(tmp_path / "sub/layers.scp"),
                "--utt2spk", str(small_data_dir / "utt2spk"), "--exp_dir", str(tmp_path / "exp")])
    model, model_meta = load_model(str(tmp_path / "exp/model.pt"))
    assert model_meta.layers == [1, 2] and model.use_hidden0  # hidden state 0 is not there to drop
    usage = (tmp_path / "exp/layer_usage.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in usage] == ["layer", "1", "2"]
    out = {}
    for how, inputs in (("cached", ["--layers_scp", str(tmp_path / "sub/layers.scp")]),
                        ("online", ["--data_dir", str(small_data_dir), *up])):
        extract_embeddings.main(["--model", str(tmp_path / "exp/model.pt"), *inputs, "--utt2spk",
                                 str(small_data_dir / "utt2spk"), "--out_dir", str(tmp_path / how)])
        out[how] = {k: np.array(v) for k, v in kaldiio.load_scp(str(tmp_path / how / "xvector.scp")).items()}
    assert out["cached"].keys() == out["online"].keys() and len(out["cached"]) == 9
    for utt in out["cached"]:
        np.testing.assert_allclose(out["online"][utt], out["cached"][utt], atol=1e-4)
    with pytest.raises(UpstreamError, match=r"layer stacks of hidden states 0,1 of wavlm_local, but the model was "
                                            r"trained on hidden states 1,2; extract the stacks with --layers 1,2"):
        extract_embeddings.main(["--model", str(tmp_path / "exp/model.pt"), "--layers_scp",
                                 str(tmp_path / "other/layers.scp"), "--out_dir", str(tmp_path / "bad")])
    # online: the config's layers select the upstream's hidden states, recorded like stage 1's
    train.main(["--config", str(tmp_path / "conf.yaml"), "--train_data_dir", str(small_data_dir), *up,
                "--exp_dir", str(tmp_path / "online"), "--layers", "'2'", "--train_conf.steps", "1"])
    model, model_meta = load_model(str(tmp_path / "online/model.pt"))
    assert (model_meta.num_layers, model_meta.layers) == (1, [2])
    with pytest.raises(ConfigError, match=r"layers: 0-2, but .*sub/layers.scp holds hidden states 1,2 \(stage 1 "
                                          r"--layers\); extract those, or leave layers: all"):
        train.main(["--config", str(tmp_path / "conf.yaml"), "--train_scp", str(tmp_path / "sub/layers.scp"),
                    "--utt2spk", str(small_data_dir / "utt2spk"), "--exp_dir", str(tmp_path / "exp2"),
                    "--layers", "0-2"])


def test_stage1_checks_the_subset_against_the_upstream_once(tiny_wavlm):
    """sv.sh runs check_upstream --layers before its jobs: a subset beyond the upstream is one line."""
    from upmp.bin import check_upstream
    with pytest.raises(ConfigError, match=r"--layers '0-9': hidden state 9 is beyond the upstream's 3 \(0-2, "):
        check_upstream.main(["--upstream", "wavlm_local", "--upstream_ckpt", str(tiny_wavlm), "--layers", "0-9"])
    check_upstream.main(["--upstream", "wavlm_local", "--upstream_ckpt", str(tiny_wavlm), "--layers", "0,2"])
