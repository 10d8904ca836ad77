"""Stage 1's planning entry point (upmp.bin.reuse_layers -> upmp.upstream.extract.plan_set): a complete
set (its done-record matches) is left alone, an incomplete one reuses the stacks of the run's other sets
made from the same audio, a dump without a record is planned again from its own stacks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from upmp.data.kaldi_dir import DataDir, read_table
from upmp.data.layer_stacks import LayerStackMeta
from upmp.done import write_done
from upmp.upstream.extract import layer_stacks_record

ROOT = Path(__file__).resolve().parents[3]


def data_dir(d: Path, utts) -> Path:
    DataDir({u: f"/corpus/{u}.wav" for u in utts}, {u: u.split("-")[0] for u in utts}).write(d)
    return d


def plan(tmp_path, set_name, *extra):
    return subprocess.run(
        [sys.executable, "-m", "upmp.bin.reuse_layers", "--data_dir", str(tmp_path / "data" / set_name),
         "--out_dir", str(tmp_path / "dump" / set_name), "--upstream", "wavlm_local", "--storage", "float32", *extra],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_complete_set_is_skipped_and_others_are_reused(tmp_path):
    e_utts = [f"s{i}-u{j}" for i in range(3) for j in range(2)]
    data_dir(tmp_path / "data" / "vox_e", e_utts)
    data_dir(tmp_path / "data" / "vox_o", e_utts[:4] + ["s9-u0"])   # 4 of 5 utterances lie in vox_e
    e = tmp_path / "dump" / "vox_e"
    e.mkdir(parents=True)
    LayerStackMeta(3, 8, 0.02, "wavlm_local").write(str(e))
    (e / "layers.scp").write_text("".join(f"{u} {e}/layers.1.1.ark:{10 * k}\n" for k, u in enumerate(e_utts)))
    r = plan(tmp_path, "vox_e", "--check")   # as a dump made before the records: planned again
    assert r.returncode == 0 and r.stdout == "stale\n", r.stderr
    assert f"vox_e/layers.scp is out of date (no record {e}/layers.scp.done): planning again" in r.stderr
    write_done(*layer_stacks_record(str(tmp_path / "data" / "vox_e"), str(e), "wavlm_local", "float32", None))
    before = {p.name: p.stat().st_mtime_ns for p in e.iterdir()}

    r = plan(tmp_path, "vox_e", "--check")
    assert r.returncode == 0 and r.stdout == "complete\n", r.stderr
    assert "vox_e/layers.scp is complete, skipping (delete it to extract again)" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in e.iterdir()} == before   # nothing planned, nothing written
    assert plan(tmp_path, "vox_e", "--check", "--storage", "float16").stdout == "stale\n"   # other stacks asked for
    wav = tmp_path / "data" / "vox_e" / "wav.scp"   # stage 0 again: the same tables rewritten, by content
    wav.write_text(wav.read_text())
    os.utime(wav, ns=(10**9, 10**9))
    assert plan(tmp_path, "vox_e", "--check").stdout == "complete\n"

    r = plan(tmp_path, "vox_o", "--sets", "vox_e", "vox_o")
    assert r.returncode == 0 and r.stdout == "1\n", r.stderr
    o = tmp_path / "dump" / "vox_o"
    assert read_table(o / "reused.scp") == {u: f"{e}/layers.1.1.ark:{10 * k}" for k, u in enumerate(e_utts[:4])}
    assert read_table(o / "todo" / "utt2spk") == {"s9-u0": "s9"}
    assert r.stdout == plan(tmp_path, "vox_o", "--sets", "vox_e", "vox_o").stdout   # an unfinished plan: again

    r = plan(tmp_path, "vox_o")   # without the run's sets nothing is reused
    assert r.stdout == "5\n" and (o / "reused.scp").read_text() == ""

    (e / "layers.scp").write_text((e / "layers.scp").read_text().split("\n", 1)[1])   # one line short
    assert plan(tmp_path, "vox_e", "--check").stdout == "stale\n"
    r = plan(tmp_path, "vox_e", "--sets", "vox_e", "vox_o")
    assert r.returncode == 0 and r.stdout == "6\n"   # its arks are gone: nothing of its own to reuse


def test_missing_data_dir_is_one_line(tmp_path):
    r = plan(tmp_path, "nothing", "--sets", "nothing")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().endswith(f"{tmp_path}/data/nothing: not a directory")
    assert not (tmp_path / "dump").exists()


def dump_of_three(tmp_path):
    """A data dir of 3 utterances and a joined dump of their stacks (a stand-in ark), made before any record."""
    utts = ["s0-u0", "s0-u1", "s1-u0"]
    d, e = data_dir(tmp_path / "data" / "vox_e", utts), tmp_path / "dump" / "vox_e"
    e.mkdir(parents=True)
    LayerStackMeta(3, 8, 0.02, "wavlm_local").write(str(e))
    (e / "layers.1.1.ark").write_bytes(b"x")
    (e / "layers.scp").write_text("".join(f"{u} {e}/layers.1.1.ark:{10 * k}\n" for k, u in enumerate(utts)))
    return utts, d, e


def test_other_audio_under_the_same_ids_is_extracted_again(tmp_path):
    """wav.scp rewritten with other audio, same ids: the set's own stacks are not reused (its previous
    record names the old wav.scp); utt2spk alone changed, or no previous record: reused by id."""
    from upmp.upstream.extract import plan_extraction
    utts, d, e = dump_of_three(tmp_path)
    args = (str(d), str(e), [], "wavlm_local", "float32", None)
    assert plan_extraction(*args).todo == []  # a dump made before the records: reused by id
    write_done(*layer_stacks_record(str(d), str(e), "wavlm_local", "float32", None))
    DataDir({u: f"/corpus/{u}.wav" for u in utts}, {u: "x" for u in utts}).write(d)
    assert plan_extraction(*args).todo == []  # only the speakers changed
    (d / "wav.scp").write_text("".join(f"{u} /other/{u}.wav\n" for u in utts))
    p = plan_extraction(*args)
    assert p.todo == utts and p.reused == {} and read_table(e / "todo" / "wav.scp")["s0-u0"] == "/other/s0-u0.wav"


def test_tables_changed_after_planning_leave_no_record(tmp_path, caplog):
    """utt2spk rewritten between the plan (reuse_layers) and the join (join_layers, another process): the
    stacks are joined but get no record, so the next run plans again."""
    from upmp.upstream.extract import join_layer_stacks, layer_stacks_done, plan_extraction
    utts, d, e = dump_of_three(tmp_path)
    args = (str(d), str(e), "wavlm_local", "float32", None)
    assert plan_extraction(args[0], args[1], [], *args[2:]).todo == []
    DataDir({u: f"/corpus/{u}.wav" for u in utts}, {u: "x" for u in utts}).write(d)
    assert join_layer_stacks(str(d), str(e)) == 3 and not (e / "layers.scp.done").exists()
    assert f"{d}/utt2spk changed while the stage ran: not writing {e}/layers.scp.done" in caplog.text
    assert plan_extraction(args[0], args[1], [], *args[2:]).todo == []
    assert join_layer_stacks(str(d), str(e)) == 3 and layer_stacks_done(*args)


def test_rewritten_audio_gives_new_stacks(small_data_dir, tiny_wavlm, tmp_path):
    """Stage 1 end to end: wav.scp rewritten with other audio under the same ids -> every utterance is
    extracted again and the joined stacks are those of the new audio."""
    import shutil

    import kaldiio
    import numpy as np

    from upmp.bin.extract_layers import main
    from upmp.upstream.extract import join_layer_stacks, plan_extraction

    def stage1(run_id):
        p = plan_extraction(str(data), str(out), [], "wavlm_local", "float32")
        if p.todo:
            main(["--data_dir", str(out / "todo"), "--out_prefix", str(out / f"layers.{run_id}.1"),
                  "--upstream", "wavlm_local", "--upstream_ckpt", str(tiny_wavlm)])
        join_layer_stacks(str(data), str(out), run_id)
        return p, dict(kaldiio.load_scp(str(out / "layers.scp")))
    data, out = tmp_path / "data" / "set", tmp_path / "dump" / "set"
    shutil.copytree(small_data_dir, data)
    plan, before = stage1("r1")
    assert len(plan.todo) == 9
    wav = read_table(data / "wav.scp")
    keys = sorted(wav)
    (data / "wav.scp").write_text("".join(f"{k} {wav[keys[(i + 1) % 9]]}\n" for i, k in enumerate(keys)))
    plan, after = stage1("r2")
    assert sorted(plan.todo) == sorted(before) and plan.reused == {}
    assert sorted(after) == sorted(before)
    for i, k in enumerate(keys):  # each id now has its neighbour's audio: its neighbour's stack
        np.testing.assert_allclose(after[k], before[keys[(i + 1) % 9]], rtol=1e-5, atol=1e-6)


def test_a_malformed_plan_or_record_is_read_as_none(tmp_path):
    """plan_inputs.json or layers.scp.done that are not ours (garbage, a list): the join records the tables
    as they are now, and the planner reuses by id as for a dump without a record; no traceback."""
    from upmp.upstream.extract import PLAN_INPUTS, join_layer_stacks, layer_stacks_done, plan_extraction
    utts, d, e = dump_of_three(tmp_path)
    args = (str(d), str(e), "wavlm_local", "float32", None)
    assert plan_extraction(args[0], args[1], [], *args[2:]).todo == []
    (e / PLAN_INPUTS).write_text("[1, 2]\n")
    assert join_layer_stacks(str(d), str(e)) == 3 and layer_stacks_done(*args)
    (e / "layers.scp.done").write_text('{"inputs": [1]}\n')
    assert plan_extraction(args[0], args[1], [], *args[2:]).todo == []
    (e / PLAN_INPUTS).write_text("not json")
    assert join_layer_stacks(str(d), str(e)) == 3 and layer_stacks_done(*args)


def test_checkpoint_rewritten_in_place_gives_new_stacks(small_data_dir, tiny_wavlm, tmp_path):
    """Stage 1 end to end with --upstream_ckpt: the record and layer_stack.json name the checkpoint's bytes
    (SHA-256); the same file rewritten with other weights makes the set stale (--check), nothing of its own
    or of another set's dump made with the old weights is reused, and the new stacks are the new weights'."""
    import shutil

    import kaldiio
    import numpy as np

    from upmp.bin.extract_layers import main
    from upmp.fileio import file_sha256
    from upmp.upstream.extract import join_layer_stacks
    from upmp.upstream.tiny import build_tiny_checkpoint

    ckpt = tmp_path / "wavlm_tiny.pt"
    shutil.copy(tiny_wavlm, ckpt)
    for name in ("a", "b"):
        shutil.copytree(small_data_dir, tmp_path / "data" / name)
    with_ckpt = ("--upstream_ckpt", str(ckpt))

    def stage1(name, run_id):
        r = plan(tmp_path, name, "--sets", "a", "b", *with_ckpt)
        assert r.returncode == 0, r.stderr
        out = tmp_path / "dump" / name
        if int(r.stdout):
            main(["--data_dir", str(out / "todo"), "--out_prefix", str(out / f"layers.{run_id}.1"),
                  "--upstream", "wavlm_local", *with_ckpt])
        join_layer_stacks(str(tmp_path / "data" / name), str(out), run_id)
        return int(r.stdout), dict(kaldiio.load_scp(str(out / "layers.scp")))

    n, old = stage1("a", "r1")
    assert n == 9 and LayerStackMeta.read(str(tmp_path / "dump" / "a")).weights_sha256 == file_sha256(ckpt)
    assert plan(tmp_path, "a", "--check", *with_ckpt).stdout == "complete\n"
    assert plan(tmp_path, "a", "--check").stdout == "stale\n"   # the name alone is not these stacks
    assert stage1("b", "r1")[0] == 0   # the same audio, the same weights: set a's stacks reused

    build_tiny_checkpoint("wavlm", str(ckpt), num_layers=2, dim=32, ffn_dim=64, heads=2, conv_dim=32, seed=1)
    r = plan(tmp_path, "a", "--check", *with_ckpt)
    assert r.stdout == "stale\n" and "weights_sha256" in r.stderr, r.stderr
    shutil.rmtree(tmp_path / "dump" / "b")
    n, new = stage1("a", "r2")
    assert n == 9 and sorted(new) == sorted(old)   # nothing reused: every stack extracted again
    assert all(not np.allclose(new[u], old[u]) for u in old)
    assert LayerStackMeta.read(str(tmp_path / "dump" / "a")).weights_sha256 == file_sha256(ckpt)
    np.testing.assert_allclose(stage1("b", "r2")[1][sorted(old)[0]], new[sorted(old)[0]])   # b reuses the new ones


def test_weights_id_names_the_bytes_of_the_weights(tmp_path):
    """A checkpoint file: its SHA-256 (as sha256sum prints it). An hf:<dir>: one digest of its config and
    weight files, changed by any of their bytes, not by other files there. Hub names: None."""
    import hashlib

    from upmp.upstream.extract import weights_id
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    assert weights_id("wavlm_local", str(ckpt)) == hashlib.sha256(b"weights").hexdigest()
    assert weights_id("wavlm_base_plus") is None and weights_id("ge2e") is None
    hf = tmp_path / "hf"
    (hf / "sub").mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    (hf / "sub" / "model.safetensors").write_bytes(b"a")
    first = weights_id(f"hf:{hf}")
    assert first is not None and len(first) == 64
    (hf / "README.md").write_text("notes")   # not weights
    assert weights_id(f"hf:{hf}") == first
    (hf / "sub" / "model.safetensors").write_bytes(b"b")
    os.utime(hf / "sub" / "model.safetensors", ns=(1, 1))   # a new stamp: hashed again
    second = weights_id(f"hf:{hf}")
    assert second != first
    (hf / "config.json").write_text('{"num_hidden_layers": 2}')
    assert weights_id(f"hf:{hf}") not in (first, second)
