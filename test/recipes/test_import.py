"""The mini recipe's run.sh on data dirs prepared elsewhere (README: "Bring your own data dirs").

Every form of fakes.data_dir_forms.make_forms is given to run.sh as a path and imported; the
stage-1 entry point (tiny WavLM) must give the same layer stacks for the same audio whichever
form it came in (run in this process: each stage-1 job spends ~20 s importing s3prl). Then one
real stages 1-5 run uses the WeSpeaker form (ids with /) for training and the ESPnet forms for
validation and test, and its stage-1 stacks must equal those of the Kaldi form too.
"""
import json
import os
import subprocess

import kaldiio
import numpy as np
import pytest

from fakes.data_dir_forms import canonical_trials, canonical_utts, make_forms, tree_hash
from helpers import make_recipe, run
from upmp.bin import extract_layers
from upmp.data.kaldi_dir import DataDir, read_table
from upmp.data.trials import read_kaldi_trials

DUMP = "dump/wavlm_local_wavlm_tiny"   # run.sh's dump dir for --upstream_ckpt .../wavlm_tiny.pt


def imported(recipe):
    """{source dir: our data/<name>}"""
    return {json.loads((d / "import.json").read_text())["source"]: d
            for d in sorted((recipe / "data").iterdir()) if (d / "import.json").is_file()}


def layers_by_canonical_id(dump, data_dir, form):
    """{canonical id: (T, L*D) stack} from <dump>/<set>/layers.scp (relative paths: from run.sh's recipe dir)."""
    utt_map = read_table(data_dir / "utt_map") if (data_dir / "utt_map").is_file() else {}
    ours = {theirs: ours for ours, theirs in utt_map.items()}
    entries = read_table(dump / data_dir.name / "layers.scp")
    recipe = dump.parent.parent
    return {c: np.asarray(kaldiio.load_mat(str(recipe / entries[ours.get(i, i)]))) for c, i in form.ids.items()}


@pytest.fixture(scope="module")
def byo(tmp_path_factory, tiny_wavlm):
    """All forms imported by run.sh (--stage 1 --stop_stage 0: the import, no stage), then
    stage 1's entry point on each imported dir, in this process."""
    root = tmp_path_factory.mktemp("byo")
    forms = make_forms(root)
    before = tree_hash(root / "their")
    recipe = make_recipe(root)
    tests = [n for n in forms if n != "kaldi_wav"]
    own = {"espnet_flac": "trial_label", "rate8k": "trials"}
    r = run(recipe, "--stage", "1", "--stop_stage", "0", "--valid_set", "",
            "--train_set", str(forms["kaldi_wav"].src),
            "--test_sets", " ".join(str(forms[n].src) for n in tests),
            "--trials", " ".join(str(forms[n].trials or forms[n].src / own[n]) for n in tests))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dump = root / "inproc" / "dump"
    for d in imported(recipe).values():
        extract_layers.main(["--data_dir", str(d), "--out_prefix", str(dump / d.name / "layers"), "--upstream",
                             "wavlm_local", "--upstream_ckpt", str(tiny_wavlm), "--storage", "float16"])
    return root, forms, recipe, before, r, dump


def test_stage1_same_layers_whichever_form(byo):
    root, forms, recipe, before, r, dump = byo
    dirs = imported(recipe)
    assert len(dirs) == len(forms) and len(set(dirs.values())) == len(forms)   # one data/<name> each
    reference = layers_by_canonical_id(dump, dirs[str(forms["kaldi_wav"].src)], forms["kaldi_wav"])
    assert len(reference) == len(canonical_utts())
    for name, form in forms.items():
        layers = layers_by_canonical_id(dump, dirs[str(form.src)], form)
        for c, ref in reference.items():
            if form.lossless:
                assert np.array_equal(layers[c], ref), (name, c)
            else:   # 8 kHz: resampled, same duration
                assert layers[c].shape == ref.shape and not np.array_equal(layers[c], ref), (name, c)
        assert len(read_kaldi_trials(str(dirs[str(form.src)] / "trials"))) == len(canonical_trials())
        assert "Successfully validated" in subprocess.run(
            ["utils/validate_data_dir.sh", "--no-text", "--no-feats", str(dirs[str(form.src)])], cwd=recipe,
            capture_output=True, text=True).stdout
    assert "rate8k/data/vox1: audio is 8000 Hz; it is resampled to 16000 Hz" in r.stderr
    assert "unsorted/data/vox1/wav.scp: not sorted (LC_ALL=C); sorted in our copy" in r.stderr
    assert tree_hash(root / "their") == before


def test_stages_1_to_5_on_imported_sets_with_slash_ids(byo, tiny_wavlm):
    root, forms, recipe, before, _, dump = byo
    r = run(recipe, "--stage", "1", "--stop_stage", "5", "--upstream", "wavlm_local", "--upstream_ckpt",
            str(tiny_wavlm), "--nj", "1",
            "--train_set", str(forms["wespeaker"].src), "--valid_set", str(forms["espnet_flac"].src),
            "--test_sets", str(forms["espnet_ark"].src), "--trials", str(forms["espnet_ark"].trials),
            "--train_args", "--train_conf.steps 20 --train_conf.batch_size 8 --train_conf.valid_every 10")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr.count("is up to date with") == 3   # imported by the fixture
    dirs = imported(recipe)
    test_set = dirs[str(forms["espnet_ark"].src)].name
    # stage 1 through run.sh: the same stacks as the Kaldi form's, in this process
    reference = layers_by_canonical_id(dump, dirs[str(forms["kaldi_wav"].src)], forms["kaldi_wav"])
    for name in ("wespeaker", "espnet_flac", "espnet_ark"):
        layers = layers_by_canonical_id(recipe / DUMP, dirs[str(forms[name].src)], forms[name])
        assert all(np.array_equal(layers[c], reference[c]) for c in reference), name
    exp = recipe / "exp" / "upmp_wavlm_local_wavlm_tiny"
    results = json.loads((exp / "results.json").read_text())["results"]
    n_target = sum(t for *_, t in canonical_trials())
    for system in ("cosine", "cosine.asnorm", "plda", "plda.asnorm"):
        m = results[f"{test_set}/{system}"]
        assert (m["n_target"], m["n_nontarget"]) == (n_target, len(canonical_trials()) - n_target)
        assert f"| {test_set} | {system} |" in (exp / "RESULTS.md").read_text()
        assert "cllr" in m   # calibrated on the imported validation set
        # scores carry the user's (ESPnet) ids, in the order of their trial list
        pairs = [line.split()[:2] for line in (exp / "scores" / f"{test_set}.{system}").read_text().splitlines()]
        assert pairs == [[a, b] for a, b, _ in canonical_trials()]
    train_emb = kaldiio.load_scp(str(exp / "embeddings" / imported(recipe)[str(forms["wespeaker"].src)].name
                                     / "xvector.scp"))
    assert sorted(train_emb) == sorted(forms["wespeaker"].ids.values())   # id00001/vid1/00001.wav ...
    assert tree_hash(root / "their") == before


def test_bad_sets_stop_the_recipe_with_one_line(byo):
    _, forms, recipe, _, _, _ = byo
    args = ["--stage", "1", "--stop_stage", "1", "--upstream", "wavlm_local", "--train_set", str(forms["kaldi_wav"].src)]
    r = run(recipe, *args, "--test_sets", f"{forms['rate8k'].src} {forms['wespeaker'].src}",
            "--trials", str(forms["rate8k"].src / "trials"))
    assert r.returncode == 1 and "--trials has 1 lists for 2 test sets" in r.stderr
    r = run(recipe, *args, "--test_sets", str(forms["wespeaker"].src))
    assert r.returncode == 1 and "Stage 1" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(
        "wespeaker/data/vox1/trials is a directory of lists: pick one with --trials")


def test_trials_of_a_set_given_by_name(tmp_path):
    """--trials for data/<set> (a name): converted after stage 0, whose own list it replaces, and when the
    run starts later; VoxCeleb, WeSpeaker and ESPnet forms map to our ids as for imports; an unchanged
    list is not rewritten (stage 4 would rescore). No upstream: --stop_stage 0."""
    recipe = make_recipe(tmp_path)
    prepared = tmp_path / "prepared"
    for name, spks in (("train", ("id10009", "id10010")), ("test", ("id10001", "id10002"))):
        utts = [f"{s}-vid-0000{n}" for s in spks for n in (1, 2)]
        DataDir({u: f"/corpus/{u}.wav" for u in utts}, {u: u.split("-")[0] for u in utts}).write(prepared / name)
    (prepared / "test" / "trials").write_text("id10001-vid-00001 id10002-vid-00002 nontarget\n")  # the recipe's
    (recipe / "local" / "data.sh").write_text(f"#!/usr/bin/env bash\nmkdir -p data\ncp -r {prepared}/. data/\n")
    pairs = [("id10001/vid/00001", "id10001/vid/00002", True), ("id10001/vid/00001", "id10002/vid/00001", False),
             ("id10002/vid/00002", "id10002/vid/00001", True), ("id10002/vid/00002", "id10001/vid/00002", False)]
    lists = {"voxceleb": [f"{int(t)} {a}.wav {b}.wav" for a, b, t in pairs],
             "wespeaker": [f"{a}.wav {b}.wav {'target' if t else 'nontarget'}" for a, b, t in pairs[1:]],
             "espnet": [f"{a}*{b} {int(t)}" for a, b, t in pairs[:3]]}
    expected = {"voxceleb": pairs, "wespeaker": pairs[1:], "espnet": pairs[:3]}
    trials = recipe / "data" / "test" / "trials"
    for form, stage in (("voxceleb", "0"), ("wespeaker", "1"), ("espnet", "1"), ("espnet", "0")):
        path = tmp_path / "lists" / form
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lists[form]))
        r = run(recipe, "--stage", stage, "--stop_stage", "0", "--train_set", "train", "--valid_set", "",
                "--test_sets", "test", "--trials", str(path))
        assert r.returncode == 0, (form, r.stderr[-3000:])
        assert ("Stage 0" in r.stderr) == (stage == "0")
        assert trials.read_text() == "".join(f"{a.replace('/', '-')} {b.replace('/', '-')} "
                                             f"{'target' if t else 'nontarget'}\n" for a, b, t in expected[form])
    os.utime(trials, ns=(10**9, 10**9))
    r = run(recipe, "--stage", "1", "--stop_stage", "0", "--train_set", "train", "--valid_set", "",
            "--test_sets", "test", "--trials", str(tmp_path / "lists" / "espnet"))
    assert r.returncode == 0 and "3 trials (2 target, 1 nontarget), unchanged" in r.stderr, r.stderr[-3000:]
    assert trials.stat().st_mtime_ns == 10**9
    # a path to one of our own data dirs is the same set (not imported as a copy of itself)
    r = run(recipe, "--stage", "1", "--stop_stage", "0", "--train_set", "train", "--valid_set", "",
            "--test_sets", "data/test", "--trials", str(tmp_path / "lists" / "voxceleb"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert trials.read_text() == "".join(f"{a.replace('/', '-')} {b.replace('/', '-')} "
                                         f"{'target' if t else 'nontarget'}\n" for a, b, t in expected["voxceleb"])
    assert sorted(p.name for p in (recipe / "data").iterdir() if p.name.startswith("test")) == ["test"]
