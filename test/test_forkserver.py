"""test/forkserver.py, which runs the suite's `python -m` calls: a forked call must answer as a fresh
interpreter does (exit status, stdout, stderr with its traceback), in the call's directory and
environment, and leave nothing behind for the next call. Every fault test's "no traceback" rests on
the second point."""
import subprocess
import sys
import textwrap

import pytest

import forkserver


def module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def both(tmp_path, name, *args, env=None):
    """(forked, fresh) answers of python -m name args, run in tmp_path."""
    forked = forkserver.run(name, *args, cwd=tmp_path, env=env)
    fresh = subprocess.run([sys.executable, "-m", name, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    return forked, fresh


def test_uncaught_exception_gives_the_traceback_and_exit_1(tmp_path):
    name = module(tmp_path, "boom", """
        def inner():
            raise ValueError("bad value 42")
        print("before", end="")
        inner()
    """)
    forked, fresh = both(tmp_path, name)
    assert forked.returncode == fresh.returncode == 1
    assert forked.stdout == fresh.stdout == "before"
    assert "Traceback (most recent call last)" in forked.stderr and "ValueError: bad value 42" in forked.stderr
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]


@pytest.mark.parametrize("exit_arg, code", [("3", 3), ("None", 0), ("'stopped: no input'", 1), ("256 + 7", 7)])
def test_exit_status_and_message_as_an_interpreter_gives_them(tmp_path, exit_arg, code):
    name = module(tmp_path, "leave", f"""
        import atexit, sys
        atexit.register(lambda: print("atexit ran"))
        sys.stdout.write("unflushed")
        sys.exit({exit_arg})
    """)
    forked, fresh = both(tmp_path, name)
    assert forked.returncode == fresh.returncode == code
    assert forked.stdout == fresh.stdout == "unflushedatexit ran\n"
    assert forked.stderr == fresh.stderr


def test_directory_environment_argv_and_threads_are_the_calls(tmp_path):
    name = module(tmp_path, "where", """
        import os, sys, torch
        print(os.getcwd(), os.environ.get("UPMP_PROBE"), sys.argv[1:], os.path.basename(sys.argv[0]),
              sys.path[0] == os.getcwd(), torch.get_num_threads(), __name__)
    """)
    for threads in ("1", "2"):
        env = dict(forkserver.os.environ, UPMP_PROBE=f"probe{threads}", OMP_NUM_THREADS=threads)
        forked, fresh = both(tmp_path, name, "a b", "c", env=env)
        assert forked.returncode == fresh.returncode == 0, forked.stderr
        assert forked.stdout == fresh.stdout == f"{tmp_path} probe{threads} ['a b', 'c'] where.py True {threads} __main__\n"


def test_nothing_leaks_into_the_next_call(tmp_path):
    module(tmp_path, "change", """
        import logging, os, torch, numpy
        torch.set_num_threads(1)
        logging.basicConfig(level=logging.DEBUG)
        numpy.LEAKED = True
        os.environ["LEAKED"] = "1"
    """)
    module(tmp_path, "look", """
        import logging, os, numpy
        print(hasattr(numpy, "LEAKED"), "LEAKED" in os.environ, len(logging.getLogger().handlers))
    """)
    assert forkserver.run("change", cwd=tmp_path).returncode == 0
    forked, fresh = both(tmp_path, "look")
    assert forked.stdout == fresh.stdout == "False False 0\n"


def test_start_up_variables_are_the_calls(tmp_path):
    """PYTHONHASHSEED is read when an interpreter starts: a call with it is served by a server
    started with it."""
    name = module(tmp_path, "hashes", "print(hash('speaker'))\n")
    seeded = dict(forkserver.os.environ, PYTHONHASHSEED="123")
    forked, fresh = both(tmp_path, name, env=seeded)
    assert forked.stdout == fresh.stdout
    assert forkserver.run(name, cwd=tmp_path).stdout != fresh.stdout  # without the seed, another hash
