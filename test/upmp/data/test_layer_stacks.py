"""Tiny S3PRL checkpoints, the layer-stack extractor and its Kaldi ark storage."""

import kaldiio
import numpy as np
import pytest

import forkserver  # test/forkserver.py
import torch

from upmp.errors import UpstreamError
from upmp.upstream.s3prl import S3PRLUpstream
from upmp.data.layer_stacks import LayerStackMeta, LayerStackWriter, batches_by_length, load_stack
from upmp.data.layout import matrix_to_stack
from upmp.upstream.tiny import build_tiny_checkpoint


def expected_frames(n_samples: int) -> int:
    """S3PRL's frame count for a 320-sample stride: ceil(n / 320)."""
    return (n_samples - 1) // 320 + 1


@pytest.mark.parametrize("kind", ["wavlm", "hubert", "wav2vec2"])
def test_tiny_checkpoints_load_in_s3prl(tmp_path, kind):
    ckpt = build_tiny_checkpoint(kind, str(tmp_path / f"{kind}.pt"), num_layers=3, dim=32, ffn_dim=64,
                                 heads=2, conv_dim=32)
    ex = S3PRLUpstream(f"{kind}_local", str(ckpt))
    assert (ex.num_layers, ex.dim, ex.frame_shift) == (4, 32, 0.02)
    assert not ex.upstream.training and not any(p.requires_grad for p in ex.parameters())
    wavs = torch.randn(3, 24000)
    lens = torch.tensor([24000, 16000, 8000])
    stack, frames = ex(wavs, lens)
    assert stack.shape == (3, 32, 4, expected_frames(24000))
    assert frames.tolist() == [expected_frames(n) for n in (24000, 16000, 8000)]
    ex.train()
    assert not ex.upstream.training  # stays frozen in eval mode


def test_trailing_zeros_are_not_padding_for_a_single_utterance(tiny_wavlm):
    """The extractor cuts each waveform to its length, so a lone padded input equals the unpadded one."""
    ex = S3PRLUpstream("wavlm_local", str(tiny_wavlm))
    short = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    alone, n = ex(short, torch.tensor([16000]))
    padded, m = ex(torch.cat([short, torch.zeros(1, 8000)], dim=1), torch.tensor([16000]))
    assert n.item() == m.item() == 50
    torch.testing.assert_close(padded[0, :, :, :50], alone[0])


def test_errors(tmp_path):
    with pytest.raises(UpstreamError, match="needs --upstream_ckpt"):
        S3PRLUpstream("wavlm_local")
    with pytest.raises(UpstreamError, match="upstream checkpoint not found"):
        S3PRLUpstream("wavlm_local", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown upstream kind"):
        build_tiny_checkpoint("conformer", str(tmp_path / "x.pt"))


@pytest.mark.parametrize("storage, atol, ratio", [("float32", 0, 1.0), ("float16", 2e-3, 0.5), ("compressed", 0.05, 0.3)])
def test_storage_round_trip_and_size(tmp_path, storage, atol, ratio):
    rng = np.random.default_rng(0)
    stacks = {f"u{i}": rng.normal(size=(3, 50 + i, 16)).astype(np.float32) for i in range(3)}
    with LayerStackWriter(str(tmp_path / storage), storage) as w:
        for k, v in stacks.items():
            w.write(k, v)
    entries = dict(l.split() for l in (tmp_path / f"{storage}.scp").read_text().splitlines())
    for k, v in stacks.items():
        np.testing.assert_allclose(load_stack(entries[k], 3), v, atol=atol)
    size = (tmp_path / f"{storage}.ark").stat().st_size
    raw = sum(v.nbytes for v in stacks.values())
    assert size <= raw * ratio + 200 * len(stacks)  # per-entry headers


def test_float32_ark_is_a_kaldi_float_matrix(tmp_path):
    with LayerStackWriter(str(tmp_path / "f"), "float32") as w:
        w.write("u", np.ones((2, 3, 4), dtype=np.float32))
    data = (tmp_path / "f.ark").read_bytes()
    assert data.startswith(b"u \x00BFM ")  # binary, Kaldi float matrix token


def test_batches_by_length():
    lengths = [5, 100, 30, 60, 10]
    assert list(batches_by_length(lengths, 0)) == [[1], [3], [2], [4], [0]]
    batches = list(batches_by_length(lengths, max_samples=120))
    assert sorted(i for b in batches for i in b) == list(range(5))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 120 or len(b) == 1


def test_extract_layers_cli(small_data_dir, tiny_wavlm, tmp_path):
    out = tmp_path / "dump" / "layers.1"
    r = forkserver.run("upmp.bin.extract_layers", "--data_dir", str(small_data_dir),
                        "--out_prefix", str(out), "--upstream", "wavlm_local", "--upstream_ckpt", str(tiny_wavlm),
                        "--storage", "float32")
    assert r.returncode == 0, r.stderr
    meta = LayerStackMeta.read(str(out.parent))
    assert (meta.num_layers, meta.dim, meta.frame_shift, meta.upstream) == (3, 32, 0.02, "wavlm_local")
    scp = dict(kaldiio.load_scp(f"{out}.scp"))
    assert len(scp) == 9
    # batched extraction equals one-utterance extraction
    from upmp.data.audio import load_audio
    from upmp.data.kaldi_dir import DataDir
    data = DataDir.load(small_data_dir)
    ex = S3PRLUpstream("wavlm_local", str(tiny_wavlm))
    for utt in data.utts[:3]:
        x = torch.from_numpy(load_audio(data.wav_scp[utt]))[None]
        stack, _ = ex(x, torch.tensor([x.shape[1]]))
        expected = stack[0].permute(1, 2, 0).numpy()  # (L, T, D)
        np.testing.assert_allclose(matrix_to_stack(np.asarray(scp[utt]), 3), expected, atol=1e-4)


def test_extract_layers_cli_reports_bad_audio(tmp_path, tiny_wavlm):
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text("s-1 /nonexistent/x.wav\n")
    (d / "utt2spk").write_text("s-1 s\n")
    (d / "spk2utt").write_text("s s-1\n")
    r = forkserver.run("upmp.bin.extract_layers", "--data_dir", str(d), "--out_prefix",
                        str(tmp_path / "o" / "layers"), "--upstream", "wavlm_local", "--upstream_ckpt", str(tiny_wavlm))
    assert r.returncode == 1
    assert "d/wav.scp:1: utterance s-1: cannot read audio file '/nonexistent/x.wav'" in r.stderr


def test_recipe_relative_arks_are_read_from_another_directory(tmp_path, monkeypatch):
    """Stage 1 writes ark paths relative to the recipe dir: training or reading from another
    directory finds them above the scp; an ark that is nowhere is one error naming scp and entry."""
    from upmp.data.layer_stacks import MatrixReader
    from upmp.errors import DataDirError
    recipe = tmp_path / "recipe"
    (recipe / "dump/up/set").mkdir(parents=True)
    monkeypatch.chdir(recipe)
    mats = {f"u{i}": np.arange(12 * (i + 2), dtype=np.float32).reshape(-1, 6) for i in range(3)}
    with LayerStackWriter("dump/up/set/layers", "float32") as w:
        for utt, m in mats.items():
            w.write(utt, m.reshape(-1, 2, 3).transpose(1, 0, 2))
    scp = recipe / "dump/up/set/layers.scp"
    entries = [line.split(maxsplit=1)[1].strip() for line in scp.read_text().splitlines()]
    assert all(e.startswith("dump/up/set/") for e in entries)
    monkeypatch.chdir(tmp_path)
    reader = MatrixReader(entries, source=str(scp))
    for i, m in enumerate(mats.values()):
        np.testing.assert_array_equal(reader.read(i), m)
        np.testing.assert_array_equal(reader.read_rows(i, 1, 2), m[1:3])
    (recipe / "dump/up/set/layers.ark").rename(recipe / "dump/up/set/moved.ark")
    with pytest.raises(DataDirError, match=r"layers.scp: dump/up/set/layers.ark \(entry 'dump/up/set/layers.ark:\d+'\) "
                                           r"is not found from .* nor from a directory above the scp; run from the "
                                           r"recipe dir that wrote it"):
        MatrixReader(entries, source=str(scp))
