"""VoxCeleb2 data preparation on a tiny tree in the official layout (dev/aac/<id>/<video>/<n>.m4a
encoded by ffmpeg from synthetic audio, vox2_meta.csv), and on the converted dev/wav tree."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fakes.voxceleb import check_authors_trials, vox2_test_tree
from helpers import dev_speakers
from upmp.data.audio import load_audio
from upmp.data.kaldi_dir import DataDir, DataDirError, validate_data_dir
from upmp.data.trials import read_kaldi_trials
from upmp.recipes.voxceleb import prepare_voxceleb2, read_vox2_meta

PIPE = re.compile(r"ffmpeg -nostdin -v 8 -i (\S+\.m4a) -f wav -ar 16000 -ac 1 -acodec pcm_s16le - \|")


def test_m4a_tree(tmp_path, small_vox2):
    root, originals = small_vox2
    out = prepare_voxceleb2(str(root), str(tmp_path / "data"), audio="m4a")
    validate_data_dir(out["voxceleb2_dev"])
    data = DataDir.load(out["voxceleb2_dev"])
    assert data.utts == sorted(originals) and len(data.spk2utt) == 5
    assert data.utt2dur is None and not (out["voxceleb2_dev"] / "utt2dur").exists()
    for utt, entry in data.wav_scp.items():
        spk, rest = utt.split("-", 1)
        video, n = rest.rsplit("-", 1)
        m = PIPE.fullmatch(entry)
        assert m and m.group(1) == str(root.resolve() / "dev" / "aac" / spk / video / f"{n}.m4a")
        assert data.utt2spk[utt] == spk
    utt = data.utts[3]
    x, y = originals[utt], load_audio(data.wav_scp[utt])
    # AAC pads to whole 1024-sample frames; the content is the original, not shifted
    assert len(x) <= len(y) < len(x) + 2048
    assert np.corrcoef(x, y[:len(x)])[0, 1] > 0.99


def test_wav_tree_and_validation_split(tmp_path, small_vox2):
    root, originals = small_vox2
    out = prepare_voxceleb2(str(root), str(tmp_path / "data"), valid_speakers=2, seed=1)  # auto: dev/wav
    for name in ("voxceleb2_dev", "voxceleb2_valid"):
        validate_data_dir(out[name])
    dev, valid = DataDir.load(out["voxceleb2_dev"]), DataDir.load(out["voxceleb2_valid"])
    assert list(dev.spk2utt) == dev_speakers(3) and list(valid.spk2utt) == dev_speakers(5)[3:]
    for utt, path in {**dev.wav_scp, **valid.wav_scp}.items():
        assert path.endswith(".wav") and abs(dev.utt2dur.get(utt, valid.utt2dur.get(utt))
                                             - len(originals[utt]) / 16000) < 1e-6
    trials = read_kaldi_trials(str(out["voxceleb2_valid"] / "trials"))
    # 2 speakers x (2 videos x 2 utts): 4 cross-video target pairs each, as many nontargets
    assert sum(t for *_, t in trials) == 8 and len(trials) == 16
    for a, b, t in trials:
        assert (a.split("-")[0] == b.split("-")[0]) == t and {a, b} <= set(valid.utts)
        if t:
            assert a.split("-", 1)[1].rsplit("-", 1)[0] != b.split("-", 1)[1].rsplit("-", 1)[0]
    capped = prepare_voxceleb2(str(root), str(tmp_path / "capped"), valid_speakers=2, valid_targets_per_speaker=1)
    assert sum(t for *_, t in read_kaldi_trials(str(capped["voxceleb2_valid"] / "trials"))) == 2


def test_vox2_meta(tmp_path, small_vox2):
    root, _ = small_vox2
    sets = read_vox2_meta(root / "vox2_meta.csv")  # the official comma-separated, padded form
    assert sets["id09999"] == ("test", 7) and all(sets[s] == ("dev", i) for i, s in enumerate(dev_speakers(5), 2))
    p = tmp_path / "vox2_meta.csv"
    p.write_text("VoxCeleb2 ID\tVGGFace2 ID\tName\tGender\tSet\nid00012\tn000012\tA B\tm\tdev\n"
                 "id00015\tn000015\tC\tf\ttest\n")
    assert read_vox2_meta(p) == {"id00012": ("dev", 2), "id00015": ("test", 3)}
    p.write_text("VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \nid00012 ,n000012 ,m ,train \n")
    with pytest.raises(DataDirError, match=r"vox2_meta.csv:2: expected .* Set dev\|test"):
        read_vox2_meta(p)
    p.write_text("ID,Set\n")
    with pytest.raises(DataDirError, match=r"vox2_meta.csv:1: expected a header with 'VoxCeleb2 ID'"):
        read_vox2_meta(p)


def test_errors(tmp_path, small_vox2, capsys):
    from upmp.bin.common import run_main
    from upmp.bin.prepare_voxceleb2 import main
    src, _ = small_vox2
    root = tmp_path / "VoxCeleb2"
    shutil.copytree(src / "dev" / "aac", root / "dev" / "aac")
    lines = (src / "vox2_meta.csv").read_text().splitlines()
    lines[3] = lines[3].replace("dev ", "test ")
    (root / "vox2_meta.csv").write_text("\n".join(lines) + "\n")
    spk = lines[3].split()[0]
    with pytest.raises(DataDirError, match=rf"vox2_meta.csv:4: speaker {spk} is in .*dev/aac but listed as 'test'"):
        prepare_voxceleb2(str(root), str(tmp_path / "data"))
    (root / "vox2_meta.csv").write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(DataDirError, match=r"vox2_meta.csv: speaker id\d+ of .* is not listed"):
        prepare_voxceleb2(str(root), str(tmp_path / "data"))
    (root / "vox2_meta.csv").unlink()
    with pytest.raises(DataDirError, match="no VoxCeleb2 dev tree .* for audio format wav"):
        prepare_voxceleb2(str(root), str(tmp_path / "data"), audio="wav")
    with pytest.raises(DataDirError, match="cannot hold out 4 of 5 development speakers"):
        prepare_voxceleb2(str(root), str(tmp_path / "data"), valid_speakers=4)
    assert not (tmp_path / "data").exists()
    with pytest.raises(SystemExit) as e:
        run_main(main, ["--root", str(tmp_path), "--out", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "\n" not in err and "no VoxCeleb2 dev tree" in err
    main(["--root", str(root), "--out", str(tmp_path / "data"), "--valid_speakers", "2"])
    assert (tmp_path / "data" / "voxceleb2_valid" / "trials").is_file()


def test_convert_audio_in_parallel_jobs_resumable(tmp_path, small_vox2):
    """m4a pipes -> flac through run.pl JOB=1:3; the files decode bit for bit as the pipes did; a
    rerun after a lost file and a killed job's leftover converts only what is missing."""
    import soundfile
    from helpers import TEMPLATE, bash_env
    root, _ = small_vox2
    out = prepare_voxceleb2(str(root), str(tmp_path / "data"), audio="m4a")
    d = out["voxceleb2_dev"]
    pipes = DataDir.load(d).wav_scp
    conv = tmp_path / "audio"
    cmd = [str(TEMPLATE / "utils" / "run.pl"), "JOB=1:3", str(conv / "log" / "convert.JOB.log"), sys.executable,
           "-m", "upmp.bin.convert_audio", "--data_dir", str(d), "--out_dir", str(conv), "--format", "flac",
           "--job", "JOB", "--num_jobs", "3"]
    final = [sys.executable, "-m", "upmp.bin.convert_audio", "--data_dir", str(d), "--out_dir", str(conv), "--format", "flac"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=bash_env())
    assert r.returncode == 0, r.stderr
    logs = [(conv / "log" / f"convert.{j}.log").read_text() for j in (1, 2, 3)]
    # 20 files, every 3rd to a job
    assert [f"converted {n} files to flac, 0 were already converted" in log for n, log in zip((7, 7, 6), logs)] == [True] * 3
    assert DataDir.load(d).wav_scp == pipes  # the shares do not touch wav.scp
    r = subprocess.run(final, capture_output=True, text=True, env=bash_env())
    assert r.returncode == 0 and "converted 0 files to flac, 20 were already converted" in r.stderr, r.stderr
    data = DataDir.load(d)
    validate_data_dir(d)
    for utt, path in data.wav_scp.items():
        assert path == str(conv.resolve() / utt.split("-")[0] / f"{utt}.flac")
        info = soundfile.info(path)
        assert info.format == "FLAC" and info.samplerate == 16000 and info.channels == 1
        y = load_audio(path)
        np.testing.assert_array_equal(y, load_audio(pipes[utt]))
        assert abs(data.utt2dur[utt] - len(y) / 16000) < 1e-3
    # resume: one file lost, another job killed mid-write (a .part left); the rest is kept
    lost, killed = (Path(data.wav_scp[u]) for u in data.utts[:2])
    lost.unlink()
    killed.rename(killed.with_name(killed.name + ".part"))
    mtimes = {u: Path(p).stat().st_mtime_ns for u, p in data.wav_scp.items() if Path(p).exists()}
    (d / "wav.scp").write_text("".join(f"{u} {pipes[u]}\n" for u in data.utts))  # stage 0 rerun: pipes again
    r = subprocess.run(final, capture_output=True, text=True, env=bash_env())
    assert r.returncode == 0 and "converted 2 files to flac, 18 were already converted" in r.stderr, r.stderr
    assert {u: Path(p).stat().st_mtime_ns for u, p in DataDir.load(d).wav_scp.items() if u in mtimes} == mtimes
    assert not list(conv.rglob("*.part"))
    np.testing.assert_array_equal(load_audio(str(killed)), load_audio(pipes[data.utts[1]]))
    # a share that cannot be decoded names the entry; wav.scp is not pointed at missing files
    (d / "wav.scp").write_text("".join(f"{u} {pipes[u] if i else 'false |'}\n" for i, u in enumerate(data.utts)))
    lost.unlink()
    r = subprocess.run(final, capture_output=True, text=True, env=bash_env())
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"wav.scp: {data.utts[0]}: command failed (exit 1): 'false'" in r.stderr.strip().splitlines()[-1]
    assert "false |" in (d / "wav.scp").read_text()


def test_recipe_stage0_convert_audio(tmp_path, small_corpus, small_vox2):
    """./run.sh --convert_audio wav: stage 0 leaves data/voxceleb2_{dev,valid} on wav files."""
    from helpers import vox1_extended_lists, vox1_split_layout
    from helpers import make_recipe, run
    vox1 = vox1_split_layout(small_corpus, tmp_path / "VoxCeleb1")
    vox1_extended_lists(small_corpus, vox1)
    vox2, _ = small_vox2
    recipe = make_recipe(tmp_path, "voxceleb2")
    args = ("--stage", "0", "--stop_stage", "0", "--voxceleb1_root", str(vox1), "--voxceleb2_root", str(vox2),
            "--local_data_opts", "--valid_speakers 2 --audio m4a --nj 2", "--convert_audio", "wav")
    r = run(recipe, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    data_before = DataDir.load(recipe / "data" / "voxceleb2_dev").wav_scp
    for name, n in (("voxceleb2_dev", 12), ("voxceleb2_valid", 8)):  # 3 + 2 speakers x 4 utterances
        data = DataDir.load(recipe / "data" / name)
        assert len(data.wav_scp) == n and len(data.utt2dur) == n
        assert all(p.startswith(str(recipe / "audio" / "voxceleb2")) and p.endswith(".wav") for p in data.wav_scp.values())
        assert len(list((recipe / "audio" / "voxceleb2" / "log").glob(f"{name}.*.log"))) == 2
    r = run(recipe, *args)  # rerun: stage 0 writes the pipes again, nothing is converted again
    assert r.returncode == 0 and "converted 0 files to wav, 12 were already converted" in r.stderr, r.stderr[-3000:]
    assert DataDir.load(recipe / "data" / "voxceleb2_dev").wav_scp == data_before
    bad = run(recipe, "--stage", "0", "--stop_stage", "0", "--convert_audio", "mp3")
    assert bad.returncode != 0 and "--convert_audio must be none, flac or wav" in bad.stderr


def test_authors_balanced_trials():
    from upmp.recipes.voxceleb import authors_balanced_trials
    # 4 speakers x 6 videos x 1-4 utterances
    utts = [f"id{s:05d}-vid{s}{v}xxxxxxx-{n:05d}" for s in range(4) for v in range(6) for n in range(1, 1 + (s + v) % 4 + 1)]
    trials = authors_balanced_trials(utts, seed=3, total=200)
    check_authors_trials(trials, utts, 200)
    # S = 4: 25 targets per speaker (100), 17 nontargets for each of the 6 pairs (102): the authors' rule
    # balances per speaker and per pair, so the totals are equal only when S = 3
    assert (sum(t for *_, t in trials), len(trials)) == (100, 202)
    same = sum(t and a.split("-")[1] == b.split("-")[1] for a, b, t in trials)
    assert 30 <= same <= 70  # a fair coin between one video and two videos
    assert trials == authors_balanced_trials(list(reversed(utts)), seed=3, total=200)  # order-free, seeded
    assert trials != authors_balanced_trials(utts, seed=4, total=200)
    three = [u for u in utts if not u.startswith("id00003")]
    t3 = authors_balanced_trials(three, seed=0, total=60)
    check_authors_trials(t3, three, 60)
    assert sum(t for *_, t in t3) == len(t3) - sum(t for *_, t in t3) == 30
    # every distinct pair is used before a speaker runs out: then an error, not a loop
    one_video = ["id00001-aaaaaaaaaaa-00001", "id00001-aaaaaaaaaaa-00002", "id00002-bbbbbbbbbbb-00001",
                 "id00002-ccccccccccc-00001"]
    t = authors_balanced_trials(one_video, seed=0, total=2)  # id00001: one video, so a same-video target
    assert t[0] == ("id00001-aaaaaaaaaaa-00001", "id00001-aaaaaaaaaaa-00002", True) or \
        t[0] == ("id00001-aaaaaaaaaaa-00002", "id00001-aaaaaaaaaaa-00001", True)
    assert t[1][2] and t[1][0].split("-")[1] != t[1][1].split("-")[1]  # id00002: two videos of one utt each
    with pytest.raises(DataDirError, match="speaker id00001 has 2 utterances, too few for 2 distinct target trials; "
                                           "ask for fewer than 8 validation trials"):
        authors_balanced_trials(one_video, seed=0, total=8)


def test_vox2_test_valid(tmp_path, small_vox2, capsys):
    from upmp.bin.common import run_main
    from upmp.bin.prepare_voxceleb2 import main
    from upmp.recipes.voxceleb import prepare_voxceleb2_test_valid
    root = vox2_test_tree(small_vox2, tmp_path / "VoxCeleb2")
    out = prepare_voxceleb2_test_valid(str(root), str(tmp_path / "data"), seed=5, total_trials=12)
    validate_data_dir(out["voxceleb2_test_valid"])
    data = DataDir.load(out["voxceleb2_test_valid"])
    trials = read_kaldi_trials(str(out["voxceleb2_test_valid"] / "trials"))
    check_authors_trials(trials, data.utts, 12)
    assert (len(trials), sum(t for *_, t in trials)) == (12, 6)  # 3 speakers: 2 targets each, 2 per pair
    assert set(data.spk2utt) == set(dev_speakers(3))
    assert set(data.utts) == {u for a, b, _ in trials for u in (a, b)}  # only what the trials use
    assert all(p.startswith(str(root.resolve() / "test" / "wav")) for p in data.wav_scp.values())
    first = (out["voxceleb2_test_valid"] / "trials").read_bytes()
    main(["--root", str(root), "--out", str(tmp_path / "again"), "--test_valid", "--valid_trials", "12", "--seed", "5",
          "--protocol_url", "none"])
    assert (tmp_path / "again" / "voxceleb2_test_valid" / "trials").read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["voxceleb2_test_valid"]
    # a dev speaker in the test tree; no test tree: one line each, nothing written
    lines = (root / "vox2_meta.csv").read_text().splitlines()
    (root / "vox2_meta.csv").write_text("\n".join(lines[:2] + [lines[2].replace("test", "dev")] + lines[3:]) + "\n")
    with pytest.raises(DataDirError, match=rf"vox2_meta.csv:3: speaker {dev_speakers(2)[1]} is in .*test/wav but "
                                           "listed as 'dev'"):
        prepare_voxceleb2_test_valid(str(root), str(tmp_path / "bad"), total_trials=12)
    src, _ = small_vox2
    for argv, says in ((["--root", str(src), "--test_valid"], f"{src}: no VoxCeleb2 test audio (test/aac/"),
                       (["--root", str(root), "--test_valid", "--valid_speakers", "2"], "give one of the two")):
        with pytest.raises(SystemExit) as e:
            run_main(main, argv + ["--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 1 and "\n" not in err and "error: " in err and says in err
    assert not (tmp_path / "bad").exists()


def test_vox2_test_valid_from_the_authors_list(tmp_path, small_vox2, caplog):
    """Their trials-vox2.csv (LABEL,SAMPLE1,SAMPLE2,VSRC_MATCH; vox2_test_wav/<id>/<video>/<n>.wav) from a
    --protocol_dir, or downloaded into the cache at the paper's commit: used as it is, repeats included."""
    import logging
    from upmp.recipes.voxceleb import prepare_voxceleb2_test_valid
    root = vox2_test_tree(small_vox2, tmp_path / "VoxCeleb2")
    a, b, c = dev_speakers(3)
    va, vb = sorted(p.name for p in (root / "test" / "wav" / a).iterdir())
    rows = [(1, f"{a}/{va}/00001.wav", f"{a}/{va}/00002.wav", 1), (1, f"{b}/{va}/00001.wav", f"{b}/{vb}/00002.wav", 0),
            (0, f"{a}/{vb}/00002.wav", f"{c}/{va}/00001.wav", 0), (0, f"{a}/{vb}/00002.wav", f"{c}/{va}/00001.wav", 0)]
    text = "LABEL,SAMPLE1,SAMPLE2,VSRC_MATCH\n" + "".join(f"{l},vox2_test_wav/{x},vox2_test_wav/{y},{m}\n" for l, x, y, m in rows)
    csv = tmp_path / "proto" / "VoxCeleb" / "trials" / "trials-vox2.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text(text)
    utt = lambda path: path.replace(".wav", "").replace("/", "-")  # noqa: E731
    expected = [(utt(x), utt(y), bool(l)) for l, x, y, _ in rows]
    with caplog.at_level(logging.INFO):
        out = prepare_voxceleb2_test_valid(str(root), str(tmp_path / "data"), protocol_dir=str(tmp_path / "proto"))
    assert read_kaldi_trials(str(out["voxceleb2_test_valid"] / "trials")) == expected
    assert "protocol source: local directory" in caplog.text and "1 repeated line(s)" in caplog.text
    assert sorted(DataDir.load(out["voxceleb2_test_valid"]).utts) == sorted({u for x, y, _ in expected for u in (x, y)})
    remote = tmp_path / "repo" / "VoxCeleb" / "preprocess" / "trials" / "trials-vox2.csv"
    remote.parent.mkdir(parents=True)
    remote.write_text(text)
    out = prepare_voxceleb2_test_valid(str(root), str(tmp_path / "dl"), cache_dir=str(tmp_path / "dl" / "local"),
                                       url_base=(tmp_path / "repo").as_uri())
    assert read_kaldi_trials(str(out["voxceleb2_test_valid"] / "trials")) == expected
    assert (tmp_path / "dl" / "local" / "VoxCeleb" / "trials" / "trials-vox2.csv").read_text() == text
    csv.write_text(text.replace(f"{c}/{va}/00001.wav", f"{c}/{va}/00009.wav", 1))
    with pytest.raises(DataDirError, match=rf"trials-vox2.csv:4: utterance '{c}-{va}-00009' not found under .*test/wav"):
        prepare_voxceleb2_test_valid(str(root), str(tmp_path / "bad"), protocol_dir=str(tmp_path / "proto"))
    assert not (tmp_path / "bad").exists()
