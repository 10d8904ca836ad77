"""Enrolment and identification (upmp/inference/speakers.py, upmp.bin.enroll / identify) with the packaged
tiny model: synthetic speakers enrolled from one session are identified in their other session; the
database's files, its model check, and the errors."""
import json

import numpy as np
import pytest

from helpers import snapshot
from upmp.errors import AudioError, ConfigError, DataDirError, ModelFileError

SPEAKERS = 6


@pytest.fixture(scope="module")
def model(tiny_experiment, tmp_path_factory):
    """The tiny experiment packaged (in this process) and loaded from its package."""
    import upmp
    from upmp.inference import load_checkpoint
    from upmp.inference.package import collect_experiment, write_package
    out = tmp_path_factory.mktemp("pkg") / "model"
    write_package(collect_experiment(str(tiny_experiment / "exp" / "upmp"), load_checkpoint=load_checkpoint), str(out))
    return upmp.load_model(str(out))


@pytest.fixture(scope="module")
def sessions(small_corpus):
    """{speaker: [[files of session 1], [files of session 2]]} of the first SPEAKERS speakers of the synthetic
    VoxCeleb-layout corpus (TTS voices; each session its own channel: band limits, EQ, reverb, noise)."""
    out = {}
    for spk_dir in sorted((small_corpus / "wav").iterdir())[:SPEAKERS]:
        out[spk_dir.name] = [sorted(map(str, s.glob("*.wav"))) for s in sorted(spk_dir.iterdir())]
    assert len(out) == SPEAKERS and all(len(s) == 2 and all(s) for s in out.values())
    return out


def test_enrol_one_session_identify_the_other(model, sessions, tmp_path):
    db = model.speakers(tmp_path / "db")
    for spk, (first, _) in sessions.items():
        assert db.enroll(spk, first) == len(first)
    assert db.names == sorted(sessions)
    tests = [(spk, f) for spk, (_, second) in sessions.items() for f in second]
    results = db.identify([f for _, f in tests], top_k=SPEAKERS)
    accuracy = np.mean([r["best"] == spk for (spk, _), r in zip(tests, results)])
    print(f"top-1 identification accuracy: {accuracy:.3f} over {len(tests)} files of {SPEAKERS} speakers "
          f"(chance {1 / SPEAKERS:.3f})")
    assert accuracy >= 0.5  # chance is 1/6
    # the database's vectors: the mean of the mean-subtracted, length-normalised embeddings, normalised again
    spk, (first, _) = next(iter(sessions.items()))
    prepared = model.scorer.prepare(model.embed_raw(first))
    want = prepared.mean(axis=0) / np.linalg.norm(prepared.mean(axis=0))
    np.testing.assert_allclose(db.vectors()[db.names.index(spk)], want, atol=1e-12)
    index = json.loads((tmp_path / "db" / "index.json").read_text())
    assert index["model"]["identity"] == model.identity and index["speakers"][spk]["files"] == first
    # each result: the best speaker's score, its calibrated LLR and the decision at the package's threshold
    for r in results:
        scores = [t["score"] for t in r["top"]]
        assert len(r["top"]) == SPEAKERS and scores == sorted(scores, reverse=True)
        assert r["best"] == r["top"][0]["speaker"] and r["score"] == scores[0]
        assert r["llr"] == pytest.approx(model.calibration["scale"] * r["score"] + model.calibration["offset"])
        assert r["threshold"] == model.threshold and r["decision"] == (r["score"] >= model.threshold)
        assert r["speaker"] == (r["best"] if r["decision"] else None)


def test_one_file_enrolment_scores_as_verify_and_unknown_below_the_threshold(model, sessions, tmp_path):
    (a, b), (c, _) = list(sessions.values())[0][0], list(sessions.values())[1][0]
    db = model.speakers(tmp_path / "db")
    db.enroll("a", [a])
    r = db.identify(b)
    assert r["score"] == pytest.approx(model.score(a, b), abs=1e-5)  # one file: the model's score (batching apart)
    db.enroll("c", [c])
    raised = model.threshold + 2.0  # above any cosine: nobody reaches it
    model.threshold, kept = raised, model.threshold
    try:
        r = db.identify(b)
    finally:
        model.threshold = kept
    assert r["speaker"] is None and r["decision"] is False and r["best"] in ("a", "c")


def test_database_of_another_model_is_refused(model, sessions, tmp_path):
    """One weight of the backend changed, or the training mean: another identity, the database refused."""
    import copy

    import torch
    spk, (first, _) = next(iter(sessions.items()))
    model.speakers(tmp_path / "db").enroll(spk, first[:1])
    before = snapshot(tmp_path / "db")
    retrained, other_mean = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        next(iter(retrained.backend.parameters())).view(-1)[0] += 1e-3
    other_mean.scorer.mean = other_mean.scorer.mean + 1e-6
    for other in (retrained, other_mean):
        other._identity = None
        assert other.identity != model.identity
        with pytest.raises(ModelFileError, match="these speakers were enrolled with another model") as e:
            other.speakers(tmp_path / "db")
        assert "\n" not in str(e.value) and model.identity[:12] in str(e.value)
    assert snapshot(tmp_path / "db") == before


def test_errors_are_one_line_and_keep_the_database(model, sessions, tmp_path):
    spk, (first, second) = next(iter(sessions.items()))
    db = model.speakers(tmp_path / "db")
    with pytest.raises(DataDirError, match="no such speaker database"):
        db.identify(second[0])
    db.enroll(spk, first)
    before = snapshot(tmp_path / "db")
    with pytest.raises(AudioError, match="nope.wav"):
        db.enroll("other", [second[0], str(tmp_path / "nope.wav")])
    with pytest.raises(AudioError, match="silent"):
        db.enroll("other", np.zeros(16000, dtype=np.float32))  # one array: one file
    with pytest.raises(ConfigError, match=f"speaker {spk!r} is already enrolled"):
        db.enroll(spk, second)
    with pytest.raises(ConfigError, match="speaker name 'a b'"):
        db.enroll("a b", second)
    assert snapshot(tmp_path / "db") == before
    db.enroll(spk, second, replace=True)  # replaced: the old vector file goes
    assert len(list((tmp_path / "db").glob("*.npy"))) == 1
    db.remove(spk)
    with pytest.raises(DataDirError, match="no speakers enrolled"):
        db.identify(second[0])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(DataDirError, match="a non-empty directory without index.json"):
        model.speakers(tmp_path / "junk")


def test_enroll_and_identify_commands(model, tiny_experiment, sessions, tmp_path, capsys):
    """upmp-enroll / upmp-identify (in this process, through run_main as the console scripts run them) on
    the experiment dir, which has its package's identity: a speaker enrolled and identified; an
    unreadable file is one error line and leaves the database as it was."""
    from upmp.bin import enroll, identify
    from upmp.bin.common import run_main
    exp = str(tiny_experiment / "exp" / "upmp")
    (spk, (first, second)), (other, (third, _)) = list(sessions.items())[:2]
    db = tmp_path / "db"
    run_main(enroll.main, ["--model", exp, "--db", str(db), "--speaker", spk, *first, "--num_threads", "1"])
    assert f"enrolled {spk} from {len(first)} files; {db} holds 1 speakers" in capsys.readouterr().out
    before = snapshot(db)
    with pytest.raises(SystemExit) as e:
        run_main(enroll.main, ["--model", exp, "--db", str(db), "--speaker", other, third[0], str(tmp_path / "nope.wav"),
                               "--num_threads", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ": error: " in ln]
    assert f"{tmp_path / 'nope.wav'}: no such file or directory" in line
    assert snapshot(db) == before
    run_main(identify.main, ["--model", exp, "--db", str(db), second[0], "--json", "--num_threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert out["best"] == spk and out["input"] == second[0] and set(out) >= {"score", "llr", "decision", "threshold"}
    assert model.speakers(db).names == [spk]  # the package reads what its experiment dir enrolled
