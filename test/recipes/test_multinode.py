"""Multi-node training (sv.sh --train_nnodes): two sv.sh stage-2 runs on this machine act as
two nodes (1 gloo process each, c10d rendezvous on localhost) and train the model one process
trains, as the 2-process run of test/upmp/train/test_distributed.py does."""
import socket
import subprocess

import torch

from helpers import TEMPLATE
from helpers import assert_same_training, run_train, train_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def stage2_recipe(dump):
    """A recipe dir whose stage 2 trains on the dump: data/train/utt2spk, dump/<upstream>/train."""
    recipe = dump / "recipe"
    recipe.mkdir()
    for name in ("sv.sh", "path.sh", "cmd.sh", "db.sh", "utils"):
        (recipe / name).symlink_to(TEMPLATE / name)
    (recipe / "data" / "train").mkdir(parents=True)
    (recipe / "data" / "train" / "utt2spk").write_text((dump / "utt2spk").read_text())
    (recipe / "dump" / "wavlm_base_plus").mkdir(parents=True)
    (recipe / "dump" / "wavlm_base_plus" / "train").symlink_to(dump / "dump")
    return recipe


def sv_stage2(recipe, *args):
    env = train_env()
    env.pop("UPMP_CMD_BACKEND", None)  # run.pl
    return subprocess.Popen(["./sv.sh", "--stage", "2", "--stop_stage", "2", "--train_set", "train", "--test_sets", "train",
                             "--train_config", str(recipe.parent / "conf.yaml"), *args],
                            cwd=recipe, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_nodes_train_the_model_one_process_trains(ddp_dump):
    one = ddp_dump / "one"
    r = run_train(ddp_dump, one)
    assert r.returncode == 0, r.stderr[-3000:]
    recipe = stage2_recipe(ddp_dump)
    endpoint = f"localhost:{free_port()}"
    nodes = [sv_stage2(recipe, "--train_nnodes", "2", "--train_rdzv_endpoint", endpoint, "--train_rdzv_id", "t2")
             for _ in range(2)]
    try:
        outs = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    exp = recipe / "exp" / "conf_wavlm_base_plus"   # <config name>_<upstream>
    logs = sorted(exp.glob("train.stdout.*.log"))
    assert [node.returncode for node in nodes] == [0, 0], \
        "\n".join(out[1][-2000:] for out in outs) + "".join(log.read_text()[-3000:] for log in logs)
    assert len(logs) == 2  # one per node, in the shared exp dir
    for log in logs:
        head = log.read_text().splitlines()[0]
        assert f"--nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint {endpoint} --rdzv_id t2" in head
    assert torch.load(exp / "model.pt", weights_only=True)["world_size"] == 2
    assert "2 processes" in (exp / "train.log").read_text()
    assert_same_training(exp, one, ddp_dump)


def test_nodes_need_a_rendezvous_endpoint(ddp_dump):
    node = sv_stage2(stage2_recipe(ddp_dump), "--train_nnodes", "2")
    _, err = node.communicate(timeout=60)
    assert node.returncode == 1 and "--train_nnodes 2 needs --train_rdzv_endpoint <host:port>" in err
    assert not (ddp_dump / "recipe" / "exp").exists()
