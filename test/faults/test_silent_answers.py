"""Fault injection (issue 19, "Silent wrong answers"): inputs that used to give a confident answer
now give one error line (exit 1, no traceback, nothing written before lost) or a warning:
API arrays of other shapes, too short / silent audio for a decision, truncated pipe output,
a package of another checkpoint than the one embedded, bad stage numbers, ONNX lengths that do
not fit the input, a misspelled experiment dir."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from helpers import bash_env, make_recipe, run as run_recipe, tone
import forkserver  # test/forkserver.py
from helpers import run_module as run, one_line_error

ROOT = Path(__file__).resolve().parents[2]


def one_line(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


@pytest.fixture(scope="module")
def model(tiny_experiment):
    import upmp
    return upmp.load_model(str(tiny_experiment / "exp" / "upmp"))


def speech(tiny_experiment, utt):
    x, rate = soundfile.read(tiny_experiment / "data" / "wav" / f"{utt}.wav", dtype="float32")
    assert rate == 16000
    return x


# --- 1. API arrays --------------------------------------------------------------------------------

def test_torchaudio_shaped_tensors_are_one_channel(model, tiny_experiment):
    """(1, N) as torchaudio.load returns it: one channel of N samples (before: N channels of one
    sample, and any two speakers scored 1.0, 'same speaker')."""
    a, b = speech(tiny_experiment, "spk0-utt0"), speech(tiny_experiment, "spk3-utt1")
    np.testing.assert_array_equal(model.embed(torch.from_numpy(a)[None]), model.embed(a))
    r = model.verify(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    assert r["score"] < 0.99 and r == model.verify(a, b)
    stereo = np.stack([a, 0.5 * a])
    expect = model.embed(stereo.mean(axis=0))
    np.testing.assert_allclose(model.embed(stereo), expect, atol=1e-6)       # (C, N), torchaudio
    np.testing.assert_allclose(model.embed(stereo.T), expect, atol=1e-6)     # (N, C), soundfile


@pytest.mark.parametrize("bad, parts", [
    (lambda a: (a * 32767).astype(np.int16), ["int16 array", "divide by 32768"]),
    (lambda a: np.float32(0.5), ["a scalar is not audio"]),
    (lambda a: a[None, None], ["shape (1, 1, 12800) is not audio", "(C, N) channels first"]),
    (lambda a: a.reshape(80, 160), ["shape (80, 160) is not audio"]),
    (lambda a: np.zeros((2, 0), np.float32), ["empty audio"]),
    (lambda a: np.where(np.arange(a.size) == 7, np.nan, a), ["1 of 12800 values are NaN or inf (first at index 7)"]),
    (lambda a: torch.from_numpy(np.where(np.arange(a.size) == 3, np.inf, a))[None], ["NaN or inf"]),
])
def test_other_arrays_are_refused(model, tiny_experiment, bad, parts):
    from upmp.errors import AudioError
    x = bad(speech(tiny_experiment, "spk0-utt0"))
    for call in (model.embed, lambda y: model.verify(y, y)):
        with pytest.raises(AudioError) as e:
            call(x)
        one_line(e, "array 0", *parts)


# --- 2. too short or silent: no decision ------------------------------------------------------------

@pytest.fixture
def bad_clips(tmp_path, tiny_experiment):
    rng = np.random.default_rng(0)
    clips = {"short": 0.3 * rng.standard_normal(160).astype(np.float32),   # 10 ms
             "silent": np.zeros(16000, np.float32),                          # digital silence
             "hiss": (3e-5 * rng.standard_normal(16000)).astype(np.float32)}  # ~ 1 LSB: -90 dBFS
    for name, x in clips.items():
        soundfile.write(tmp_path / f"{name}.wav", x, 16000, subtype="FLOAT")
    return tmp_path, speech(tiny_experiment, "spk0-utt1")


@pytest.mark.parametrize("clip, parts", [
    ("short", ["160 samples (10.0 ms), shorter than the 400 samples (25 ms) the upstream ge2e needs"]),
    ("silent", ["no speech: the signal is silent (RMS -inf dBFS, below -80 dBFS)"]),
    ("hiss", ["no speech: the signal is silent (RMS -90 dBFS"]),
])
def test_verify_gives_no_decision_on_short_or_silent_audio(bad_clips, tiny_experiment, clip, parts):
    d, _ = bad_clips
    good = tiny_experiment / "data" / "wav" / "spk0-utt1.wav"
    bad = d / f"{clip}.wav"
    pair = {"short": (bad, good), "silent": (good, bad), "hiss": (bad, bad)}[clip]  # enrolment, test or both
    r = run("upmp.bin.verify", "--model", tiny_experiment / "exp" / "upmp", *pair)
    line = one_line_error(r, *parts, "no score or decision")
    assert line.split(": error: ")[1].startswith(f"{bad}: ")
    assert "target" not in r.stdout and "score" not in r.stdout


def test_the_api_raises_on_short_or_silent_audio_and_embed_warns(model, bad_clips, caplog):
    from upmp.errors import AudioError
    d, good = bad_clips
    for clip in ("short", "silent", "hiss"):
        for call in (model.verify, model.score):
            with pytest.raises(AudioError) as e:
                call(good, str(d / f"{clip}.wav"))
            one_line(e, f"{d / clip}.wav: ", "no score or decision")
        with pytest.raises(AudioError, match="array 1: 160 samples"):
            model.verify(good, good[:160])
    with caplog.at_level("WARNING"):
        assert model.embed(str(d / "silent.wav")).shape == (model.embed_dim,)   # an embedding is no decision
    assert "silent.wav: no speech" in caplog.text
    quiet = good / np.abs(good).max() * 10 ** (-50 / 20)   # a quiet speaker (peak -50 dBFS) still gets an answer
    assert model.verify(quiet, good)["decision"] is not None


def test_trial_list_with_a_silent_utterance(bad_clips, tiny_experiment, tmp_path):
    d, _ = bad_clips
    wav_scp = tmp_path / "wav.scp"
    wav_scp.write_text(f"good {tiny_experiment}/data/wav/spk0-utt1.wav\nquiet {d}/silent.wav\n")
    (tmp_path / "trials").write_text("good quiet\n")
    out = tmp_path / "scores"
    out.write_text("earlier scores\n")
    r = run("upmp.bin.verify", "--model", tiny_experiment / "exp" / "upmp", "--trials", tmp_path / "trials",
            "--wav_scp", wav_scp, "--out", out)
    one_line_error(r, f"{wav_scp}: utterance quiet: no speech", "no score or decision")
    assert out.read_text() == "earlier scores\n" and not Path(f"{out}.llr").exists()


def test_embed_warns_on_short_audio_as_stage_3_does(bad_clips, tiny_experiment, tmp_path):
    d, _ = bad_clips
    r = run("upmp.bin.embed", "--model", tiny_experiment / "exp" / "upmp", d / "short.wav", "--out", tmp_path / "emb")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and f"{d}/short.wav: 160 samples (10.0 ms)" in warnings[0], r.stderr
    assert (tmp_path / "emb" / "xvector.scp").read_text().startswith("short ")


XVECTOR = {"backend": "xvector", "use_hidden0": True, "backend_conf": {"ndim": 16, "output_size": 32, "embed_dim": 8}}


def test_backend_minimum_frames():
    """The x-vector TDNN needs 7 frames (a RuntimeError traceback below); other backends embed one."""
    from upmp.backends import SpeakerEmbeddingModel
    for name, conf in (("xvector", XVECTOR["backend_conf"]), ("upmp", {"conv_dim": 4, "heads": 2, "embed_dim": 8})):
        model = SpeakerEmbeddingModel(name, 8, 3, True, conf).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 8, 3, model.min_frames)).shape == (1, 8)
            if model.min_frames > 1:
                with pytest.raises(RuntimeError):
                    model(torch.randn(1, 8, 3, model.min_frames - 1))
    assert SpeakerEmbeddingModel("xvector", 8, 3, True, XVECTOR["backend_conf"]).min_frames == 7


def test_audio_too_short_for_the_backend(tmp_path, dump):
    """The API (any call: no embedding exists) and stage 3 name the utterance in one line."""
    from upmp.backends import SpeakerEmbeddingModel
    from upmp.checkpoint import save_model
    from upmp.data.layer_stacks import LayerStackMeta, LayerStackWriter
    from upmp.errors import AudioError
    from upmp.inference import SpeakerModel
    torch.manual_seed(0)
    backend = SpeakerEmbeddingModel("xvector", 256, 4, True, XVECTOR["backend_conf"]).eval()
    info = {"config": XVECTOR, "layer_stack": {"num_layers": 4, "dim": 256, "frame_shift": 0.01, "upstream": "ge2e"},
            "upstream": {"name": "ge2e"}, "mean": [0.0] * 8, "calibration": None, "threshold": None}
    model = SpeakerModel({"info": info, "backend": backend.state_dict(), "upstream_state": None, "upstream_source": None})
    x = tone(1.0, 200.0)
    assert model.embed(x[:960]).shape == (8,)                # 7 GE2E frames
    for call in (model.embed, lambda y: model.verify(x, y)):
        with pytest.raises(AudioError) as e:
            call(x[:800])                                    # 6 frames: above the upstream's 400 samples
        one_line(e, "800 samples give 6 frames of the upstream, the xvector backend needs at least 7 (70 ms)")
    # stage 3 on cached stacks: one line naming the utterance (before: a RuntimeError traceback)
    small = SpeakerEmbeddingModel("xvector", 8, 3, True, XVECTOR["backend_conf"]).eval()
    save_model(tmp_path / "model.pt", {"config": XVECTOR, "model": small.state_dict(),
                                       "layer_stack": vars(LayerStackMeta(3, 8, 0.02, "test"))})
    with LayerStackWriter(str(dump / "dump" / "short"), "float32") as w:
        w.write("s0-short", np.ones((3, 5, 8), np.float32))
    scp = dump / "dump" / "layers.scp"
    scp.write_text(scp.read_text() + (dump / "dump" / "short.scp").read_text())
    out = tmp_path / "emb"
    out.mkdir()
    (out / "xvector.scp").write_text("earlier\n")
    r = run("upmp.bin.extract_embeddings", "--model", tmp_path / "model.pt", "--layers_scp", scp, "--out_dir", out)
    one_line_error(r, f"{scp}: utterance s0-short: 5 frames, the backend needs at least 7 (140 ms)")
    assert (out / "xvector.scp").read_text() == "earlier\n"


# --- 3. a pipe whose output is shorter than its header ---------------------------------------------

def test_truncated_pipe_output_is_refused_like_the_truncated_file(tmp_path, tiny_experiment):
    """`cat a.wav | head -c 1000 |` was embedded silently (478 of 16000 samples) while the same
    bytes in a file were refused: both are one line naming the utterance now."""
    wav = tmp_path / "a.wav"
    soundfile.write(wav, tone(1.0, 220.0), 16000, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes(wav.read_bytes()[:1000])
    cases = {"file": (f"{tmp_path}/cut.wav", f"audio file '{tmp_path}/cut.wav': the WAV header promises "
                                             "16000 samples but the file holds 478"),
             "pipe": (f"cat {wav} | head -c 1000 |", f"the output of 'cat {wav} | head -c 1000': the WAV header "
                                                     "promises 16000 samples but the command gave 478")}
    for kind, (entry, problem) in cases.items():
        scp = tmp_path / f"{kind}.scp"
        scp.write_text(f"utt1 {entry}\n")
        out = tmp_path / f"emb_{kind}"
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
        r = run("upmp.bin.embed", "--model", tiny_experiment / "exp" / "upmp", scp, "--out", out)
        one_line_error(r, f"{scp}: utterance utt1: {problem}", "remove the utterance")
        # the user's file intact, no embeddings (embed_info.json records the model and inputs only)
        assert sorted(p.name for p in out.iterdir()) in (["notes.txt"], ["embed_info.json", "notes.txt"])
        assert (out / "notes.txt").read_text() == "mine\n" and not (out / "xvector.scp").exists()


def test_streaming_wav_headers_of_pipes_are_accepted(tmp_path):
    """Writers that cannot seek back write a stand-in size into the header (SoX 0x7FFFF000, ffmpeg
    0xFFFFFFFF): not a truncation."""
    from upmp.data.audio import load_audio
    x = tone(0.5, 300.0)
    raw = tmp_path / "a.raw"
    raw.write_bytes((x * 32767).astype("<i2").tobytes())
    sox = f"cat {raw} | sox -t raw -r 16000 -e signed -b 16 -c 1 - -t wav - 2>/dev/null |"
    head = subprocess.run(sox[:-1], shell=True, capture_output=True).stdout[40:44]
    assert head == (0x7FFFF000).to_bytes(4, "little")  # the data size SoX writes to a pipe
    np.testing.assert_allclose(load_audio(sox), x, atol=1e-4)
    soundfile.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    ff = f"cat {tmp_path}/a.wav | ffmpeg -nostdin -v 8 -i - -f wav - |"
    np.testing.assert_allclose(load_audio(ff), x, atol=1e-4)


# --- 4. the mean / calibration / threshold belong to the model packaged ----------------------------

def test_package_of_another_checkpoint_needs_its_own_embeddings(tiny_experiment, tmp_path):
    exp = tmp_path / "exp" / "upmp"
    shutil.copytree(tiny_experiment / "exp" / "upmp", exp)
    assert (exp / "model_last.pt").read_bytes() != (exp / "model.pt").read_bytes()
    emb = exp / "embeddings" / "data"
    assert (emb / "model.sha256").read_text().split()[1] == str(tiny_experiment / "exp" / "upmp" / "model.pt")
    before = {p: p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    r = run("upmp.bin.package_model", "--exp_dir", exp, "--model", exp / "model_last.pt", "--out", tmp_path / "pkg")
    line = one_line_error(r, f"{emb}/xvector.scp: the train embeddings were made by another model file",
                          f"not by {exp}/model_last.pt", "python -m upmp.bin.extract_embeddings --model "
                          f"{exp}/model_last.pt --data_dir {tiny_experiment}/data --upstream ge2e --out_dir "
                          f"{exp}/embeddings_model_last/data",
                          f"--train_embeddings {exp}/embeddings_model_last/data/xvector.scp",
                          f"--valid_embeddings {exp}/embeddings_model_last/data/xvector.scp")
    assert not (tmp_path / "pkg").exists()
    assert before == {p: p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    import kaldiio
    import upmp
    from upmp.bin import extract_embeddings, package_model
    from upmp.errors import ModelFileError
    with pytest.raises(ModelFileError, match="made by another model file"):
        upmp.load_model(str(exp / "model_last.pt"))
    # the command it gives, then the options it names: a package whose mean is model_last's
    cmd = line.split("(python -m ", 1)[1].split(") and pass")[0].split()
    assert cmd[0] == "upmp.bin.extract_embeddings"
    extract_embeddings.main(cmd[1:] + ["--num_threads", "1"])
    new = exp / "embeddings_model_last" / "data"
    package_model.main(["--exp_dir", str(exp), "--model", str(exp / "model_last.pt"), "--out", str(tmp_path / "pkg"),
                        "--train_embeddings", str(new / "xvector.scp"), "--valid_embeddings", str(new / "xvector.scp")])
    mean = np.mean([v for _, v in kaldiio.load_scp(str(new / "xvector.scp")).items()], axis=0)
    info = json.loads((tmp_path / "pkg" / "package.json").read_text())
    np.testing.assert_allclose(info["mean"], mean, rtol=1e-5, atol=1e-6)
    old = np.mean([v for _, v in kaldiio.load_scp(str(emb / "xvector.scp")).items()], axis=0)
    assert np.abs(np.asarray(info["mean"]) - old).max() > 1e-4
    # model.pt with model_last's embeddings: refused the other way round
    with pytest.raises(ModelFileError) as e:
        package_model.main(["--exp_dir", str(exp), "--out", str(tmp_path / "pkg2"),
                            "--train_embeddings", str(new / "xvector.scp")])
    one_line(e, f"made by another model file ({exp}/model_last.pt", f"not by {exp}/model.pt",
             f"--out_dir {exp}/embeddings/data")
    # an experiment from before the record: model.pt (what stage 3 embeds) is trusted, others are not
    (emb / "model.sha256").unlink()
    package_model.main(["--exp_dir", str(exp), "--out", str(tmp_path / "pkg3")])
    with pytest.raises(ModelFileError) as e:
        package_model.main(["--exp_dir", str(exp), "--model", str(exp / "model_last.pt"), "--out", str(tmp_path / "pkg4")])
    one_line(e, "made by an unrecorded model (no model.sha256 beside it")
    assert not (tmp_path / "pkg2").exists() and not (tmp_path / "pkg4").exists()


# --- 5. stage numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--stage", "abc"], "--stage 'abc': expected a non-negative integer"),
    (["--stop_stage=-1"], "--stop_stage '-1': expected a non-negative integer"),
    (["--stage", "1.5"], "--stage '1.5': expected a non-negative integer"),
])
def test_bad_stage_numbers_stop_before_anything_runs(tmp_path, args, message):
    recipe = make_recipe(tmp_path)
    before = sorted(p.relative_to(recipe) for p in recipe.rglob("*"))
    r = run_recipe(recipe, *args)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Successfully finished" not in r.stdout + r.stderr
    assert sorted(p.relative_to(recipe) for p in recipe.rglob("*")) == before  # no data/, exp/, dump/


def test_stage_after_stop_stage_runs_no_stage_and_says_so(tmp_path):
    """--stage 1 --stop_stage 0 stays the way to import sets given as paths without running a stage."""
    recipe = make_recipe(tmp_path)
    r = run_recipe(recipe, "--stage", "4", "--stop_stage", "2", "--train_set", "none", "--test_sets", "none")
    assert "--stage 4 is after --stop_stage 2: no stage runs" in r.stderr
    assert "Stage " not in r.stderr, r.stderr


# --- 6. ONNX lengths ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_graphs(model, tmp_path_factory):
    from upmp.export import export_onnx
    d = tmp_path_factory.mktemp("onnx")
    for graph in ("backend", "full"):
        export_onnx(model, str(d / f"{graph}.onnx"), graph)
    return d


@pytest.mark.parametrize("graph", ["backend", "full"])
def test_onnx_lengths_that_do_not_fit_the_input(model, onnx_graphs, tiny_experiment, graph):
    from upmp.errors import AudioError
    from upmp.data.layout import pad_stacks
    from upmp.export import OnnxEmbedder, onnx_session, padded_waveforms
    wavs = [speech(tiny_experiment, u) for u in ("spk0-utt0", "spk1-utt2", "spk2-utt1")]
    path = str(onnx_graphs / f"{graph}.onnx")
    items = [model.layer_stack(w) for w in wavs] if graph == "backend" else wavs
    x, lens = pad_stacks(items) if graph == "backend" else padded_waveforms(items)
    names = ("stack", "lengths") if graph == "backend" else ("wavs", "wav_lens")
    unit = "frames" if graph == "backend" else "samples"
    embedder = OnnxEmbedder(path)
    expect = model.embed_raw(wavs)
    np.testing.assert_allclose(embedder.embed(items), expect, atol=1e-4)   # valid input: unchanged
    np.testing.assert_allclose(onnx_session(path).run(None, {names[0]: x, names[1]: lens})[0], expect, atol=1e-4)
    bad = {"fewer": (lens[:2], f"2 {names[1]} for a batch of 3 inputs"),
           "more": (np.r_[lens, lens[:1]], f"4 {names[1]} for a batch of 3 inputs"),
           "zero": (np.r_[lens[:2], 0], f"{names[1]}[2] = 0 {unit}"),
           "long": (np.r_[lens[:1] + x.shape[-1], lens[1:]], f"{names[1]}[0] = {lens[0] + x.shape[-1]} {unit}")}
    for lengths, part in bad.values():
        with pytest.raises(AudioError) as e:
            embedder(x, lengths)
        one_line(e, path, part)
        with pytest.raises(Exception, match="ONNXRuntimeError"):   # the graph itself no longer answers
            onnx_session(path).run(None, {names[0]: x, names[1]: lengths.astype(np.int64)})


# --- 7. upmp-results ------------------------------------------------------------------------------

def test_results_with_a_misspelled_experiment(tmp_path):
    exp = tmp_path / "exp" / "a"
    exp.mkdir(parents=True)
    (exp / "results.json").write_text(json.dumps({
        "experiment": "a", "backend": "upmp", "upstream": "ge2e",
        "results": {"test/cosine": {"eer": 2.5, "mindcf_0.01": 0.5, "mindcf_0.05": 0.25}}}))
    (tmp_path / "exp" / "notes").write_text("a file, not an experiment\n")
    (tmp_path / "cmp.md").write_text("earlier table\n")
    for missing in ("exp/misspelled", "exp/notes"):
        r = forkserver.run("upmp.bin.results", "exp/a", missing, "--out", "cmp", env=bash_env(), cwd=tmp_path)
        one_line_error(r, f"{missing}: {'no such directory' if 'miss' in missing else 'not a directory'}",
                       "give experiment dirs")
        assert (tmp_path / "cmp.md").read_text() == "earlier table\n" and not (tmp_path / "cmp.csv").exists()
    (tmp_path / "exp" / "before_stage5").mkdir()
    r = forkserver.run("upmp.bin.results", "exp/a", "exp/before_stage5", "--out", "cmp", env=bash_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "exp/before_stage5: no results.json (not an experiment dir), skipped" in r.stderr
    assert "| a | upmp |" in (tmp_path / "cmp.md").read_text()
