"""VoxCeleb2 data preparation on a tiny tree in the official layout (dev/aac/<id>/<video>/<n>.m4a
encoded by ffmpeg from synthetic audio, vox2_meta.csv), and on the converted dev/wav tree."""
import re
import shutil

import numpy as np
import pytest

from conftest import dev_speakers
from upmp.data.audio import load_audio
from upmp.data.kaldi_dir import DataDir, DataDirError, validate_data_dir
from upmp.data.trials import read_kaldi_trials
from upmp.data.voxceleb import prepare_voxceleb2, read_vox2_meta

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
        main(["--root", str(tmp_path), "--out", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "\n" not in err and "no VoxCeleb2 dev tree" in err
    main(["--root", str(root), "--out", str(tmp_path / "data"), "--valid_speakers", "2"])
    assert (tmp_path / "data" / "voxceleb2_valid" / "trials").is_file()
