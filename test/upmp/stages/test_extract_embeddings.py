"""Stage 3's done-record: complete while the model, the inputs and the options are those it was made from."""
import logging
import os
import shutil

from upmp.bin.extract_embeddings import main


def check(args, capsys, caplog) -> str:
    """--check's answer on stdout (its log line in caplog.text)."""
    caplog.clear()
    main(args + ["--check"])
    return capsys.readouterr().out.strip()


def test_embeddings_rerun_when_the_model_inputs_or_options_change(tiny_experiment, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    shutil.copytree(tiny_experiment / "data", data)
    model = tmp_path / "model.pt"
    shutil.copy2(tiny_experiment / "exp" / "upmp" / "model.pt", model)
    out = tmp_path / "emb"
    args = ["--model", str(model), "--data_dir", str(data), "--upstream", "ge2e", "--out_dir", str(out)]
    assert check(args, capsys, caplog) == "stale" and not out.exists()  # --check computes nothing
    main(args + ["--num_threads", "1"])
    assert (out / "xvector.scp.done").is_file()
    assert check(args, capsys, caplog) == "complete"
    assert f"{out}/xvector.scp is complete, skipping (delete it to extract again)" in caplog.text
    assert check(args + ["--crop_seconds", "1"], capsys, caplog) == "stale"   # an option that shapes the vectors
    assert check(args + ["--max_batch_frames", "100"], capsys, caplog) == "complete"  # one that does not
    st = model.stat()   # the model file by its stamp
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert check(args, capsys, caplog) == "stale"
    assert f"{out}/xvector.scp is out of date ({model} changed since {out}/xvector.scp.done)" in caplog.text
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert check(args, capsys, caplog) == "complete"
    utt2spk = data / "utt2spk"   # the data dir's tables by content: stage 0 run again rewrites them unchanged
    text = utt2spk.read_text()
    utt2spk.write_text(text)
    os.utime(utt2spk, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert check(args, capsys, caplog) == "complete"
    utt2spk.write_text(text.replace("spk0", "spk9", 1))
    assert check(args, capsys, caplog) == "stale"
    assert f"({utt2spk} changed since {out}/xvector.scp.done)" in caplog.text
    utt2spk.write_text(text)
    assert check(args, capsys, caplog) == "complete"
    record = out / "xvector.scp.done"   # made before the records: adopted once when consistent
    for spoil, mend in (
            (lambda: (out / "model.sha256").write_text("0" * 64 + f"  {model}\n"), lambda: None),  # another model
            (lambda: scp.write_text("".join(lines[:-1])), lambda: scp.write_text("".join(lines))),  # incomplete
            (lambda: os.utime(model, ns=(st.st_atime_ns, scp.stat().st_mtime_ns + 1)),  # older than the model
             lambda: os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns)))):
        scp, sha = out / "xvector.scp", (out / "model.sha256").read_text()
        lines = scp.read_text().splitlines(keepends=True)
        record.unlink()
        spoil()
        assert check(args, capsys, caplog) == "stale" and not record.exists()
        mend()
        (out / "model.sha256").write_text(sha)
        assert check(args, capsys, caplog) == "complete" and record.is_file()
        assert f"{out}/xvector.scp made before done-records; adopted (same model, complete)" in caplog.text
    (out / "spk_xvector.scp").unlink()   # an output gone
    assert check(args, capsys, caplog) == "stale"


def test_check_of_a_set_not_embedded_yet_does_not_load_torch(tiny_experiment, tmp_path):
    """sv.sh asks --check for every set before stage 3 runs: on a first run the answer is 'stale'
    without torch's import (seconds a set, the extraction then pays it once)."""
    import subprocess
    import sys
    model = tiny_experiment / "exp" / "upmp" / "model.pt"
    code = ("import runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_module('upmp.bin.extract_embeddings', run_name='__main__'); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, "extract_embeddings", "--model", str(model), "--data_dir",
                        str(tiny_experiment / "data"), "--upstream", "ge2e", "--out_dir", str(tmp_path / "emb"),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["stale", "False"]
