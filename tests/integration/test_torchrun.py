"""Real torchrun restarts: two torchrun agents on this machine (two simulated nodes, each with
its own SMP), c10d rendezvous, --max-restarts; a worker is SIGKILLed mid-run, torchrun restarts
every worker (the rendezvous may renumber the nodes: the agent that held rank 0 may now hold
rank 1, beside the other node's SMP), the workers restore and train to the end, bit for bit like
an uninterrupted run. A renumbered job must find its snapshots where they are held, never start
again from step 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ecsnap.testing import LocalCluster, compare_runs, free_port, read_losses

pytest.importorskip("torchdata")

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "train.py")
STEPS, KILL_AT = 24, 14


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def two_agents(
    cluster: LocalCluster, out: Path, job: str, script: list[str], timeout: float = 150
) -> list[str]:
    """Run `script` under two torchrun agents (1 worker each); their outputs."""
    port = free_port()
    agents, logs = [], []
    for node, socket in enumerate(cluster.sockets):
        env = dict(os.environ, ECSNAP_SOCKET=socket, OMP_NUM_THREADS="1")
        env.update(ECSNAP_GROUP_SIZE="2", ECSNAP_PARITY="1")
        # torch's rendezvous store, shared with the workers' process group by default, hands a
        # restarted worker the previous attempt's gloo addresses (pytorch/pytorch#135712): the
        # restarted workers then wait for each other forever. `smp launch` sets this for you.
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        for var in ("ECSNAP_JOB", "SMP_SOCKET", "TORCHELASTIC_RUN_ID"):
            env.pop(var, None)
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-id", job, "--max-restarts", "2", "--monitor-interval", "0.2",
            *script,
        ]  # fmt: skip
        log = out.parent / f"{out.name}.agent{node}.log"
        logs.append(log)
        with log.open("wb") as f:
            agents.append(
                subprocess.Popen(
                    cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    try:
        codes = [a.wait(timeout) for a in agents]
    finally:
        for a in agents:  # the agent and its workers (sessions of their own): none may linger
            for pid in [*children(a.pid), a.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            a.wait(10)
    outputs = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], "\n".join(o[-5000:] for o in outputs)
    return outputs


def test_torchrun_restart_after_a_worker_is_killed_resumes_bitwise(workdir: Path) -> None:
    with LocalCluster(workdir / "nodes", nodes=2, memory_limit="256M") as cluster:
        ref = workdir / "ref"
        two_agents(cluster, ref, "ref", [EXAMPLE, "--out", str(ref), "--steps", str(STEPS)])

        out = workdir / "run"
        inject = ["-m", "ecsnap.testing.inject", "--crash-at-step", str(KILL_AT), "--rank", "1"]
        script = [*inject, "--first-run-only", "--", EXAMPLE, "--out", str(out)]
        logs = "\n".join(two_agents(cluster, out, "job", [*script, "--steps", str(STEPS)]))
        assert f"rank 1: SIGKILL at step {KILL_AT}" in logs, logs[-5000:]
        assert "starting fresh" not in logs.split(f"SIGKILL at step {KILL_AT}")[1], logs[-5000:]
        assert compare_runs(ref, out, 2) == []
        for rank in (0, 1):
            # every step once in the first run up to the kill, then again from the restored one
            assert sorted(read_losses(out, rank)) == list(range(STEPS))
