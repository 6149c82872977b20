"""`smp launch` command lines: where launch options end and torchrun's begin, and job ids that
every launch of the same command agrees on."""

from __future__ import annotations

import pytest

from smp.defaults import socket_from as socket_for
from smp.launch import LaunchError, job_id_for, script_index, split_argv


def test_launch_options_come_first_then_torchrun_takes_the_rest() -> None:
    ours, rest = split_argv(
        ["--socket", "/s", "--memory-limit=8G", "--nproc-per-node", "2", "train.py", "--socket"]
    )
    assert ours == ["--socket", "/s", "--memory-limit=8G"]
    assert rest == ["--nproc-per-node", "2", "train.py", "--socket"]
    assert split_argv(["--job", "j", "--", "--socket", "x"]) == (["--job", "j"], ["--socket", "x"])
    assert split_argv(["train.py"]) == ([], ["train.py"])
    assert split_argv(["--help"]) == (["--help"], [])
    # --fresh takes no value: the option after it is still a launch option
    assert split_argv(["--fresh", "--job", "j", "--standalone", "t.py"]) == (
        ["--fresh", "--job", "j"],
        ["--standalone", "t.py"],
    )


@pytest.mark.parametrize(
    ("args", "at"),
    [
        (["train.py", "--lr", "1"], 0),
        (["--nproc-per-node", "2", "--standalone", "train.py"], 3),
        (["--nnodes=2", "-m", "pkg.train", "--x"], 2),
        (["--rdzv-endpoint", "h:1", "-t3", "--no-python", "python3", "t.py"], 4),
        (["--max-restarts", "3", "--", "train.py"], 3),
        (["--nproc-per-node", "2"], None),
    ],
)
def test_script_index(args: list[str], at: int | None) -> None:
    assert script_index(args) == at


def test_job_id_precedence_and_stability() -> None:
    cmd = ["--standalone", "--nproc-per-node", "2", "train.py", "--lr", "0.1"]
    derived = job_id_for(None, {}, cmd)
    assert derived.startswith("train-") and len(derived) == len("train-") + 8
    # the same script and arguments give the same id whatever torchrun's options (node rank...)
    assert job_id_for(None, {}, ["--nnodes", "2", "--node-rank", "1", *cmd[3:]]) == derived
    assert job_id_for(None, {}, [*cmd[:-1], "0.2"]) != derived
    rdzv = ["--rdzv-id", "run42", "--nnodes", "2", "train.py"]
    assert job_id_for(None, {}, rdzv) == "run42"
    assert job_id_for(None, {"ECSNAP_JOB": "env-job"}, rdzv) == "env-job"
    assert job_id_for("flag-job", {"ECSNAP_JOB": "env-job"}, rdzv) == "flag-job"
    assert job_id_for(None, {}, ["-m", "ecsnap.demo.train"]).startswith("ecsnap.demo.train-")
    with pytest.raises(LaunchError, match="--job"):
        job_id_for(None, {}, ["--nproc-per-node", "2"])
    with pytest.raises(LaunchError, match="not valid"):
        job_id_for("../escape", {}, cmd)


def test_socket_resolution_matches_smp_status() -> None:
    env = {"SMP_SOCKET": "/a.sock", "ECSNAP_SOCKET": "/b.sock"}
    assert socket_for("/flag.sock", env) == "/flag.sock"
    assert socket_for(None, env) == "/a.sock"
    assert socket_for(None, {"ECSNAP_SOCKET": "/b.sock"}) == "/b.sock"
    assert socket_for(None, {}).endswith("/smp.sock")
