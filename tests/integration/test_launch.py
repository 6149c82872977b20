"""`smp launch`, `smp stop` and `smp status` as a user runs them: real torchrun, real SMP.

`smp launch` starts the node's SMP detached (it outlives the job), runs a 2-rank torchrun job;
the trainers are killed mid-run; the same command again reuses the running SMP and restores from
its memory; concurrent launches start one SMP; a SMP that cannot start is reported with its log.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ecsnap.testing import read_restore
from smp import report
from smp._proto import control_pb2 as pb
from smp.launch import job_id_for

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

STEPS = 400


@dataclass
class Node:
    root: Path
    store: str

    @property
    def socket(self) -> str:
        return str(self.root / "smp.sock")

    @property
    def smp_log(self) -> Path:
        return self.root / "smp.log"

    def launch_args(self, memory_limit: str = "256M") -> list[str]:
        return [
            "--socket",
            self.socket,
            "--store-dir",
            self.store,
            "--memory-limit",
            memory_limit,
            "--smp-log",
            str(self.smp_log),
        ]


def smp_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smp", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def node(workdir: Path) -> Iterator[Node]:
    shm = Path("/dev/shm")
    store = tempfile.mkdtemp(prefix="ecsnap-launch-", dir=shm) if shm.is_dir() else None
    n = Node(workdir, store or str(workdir / "store"))
    try:
        yield n
    finally:
        smp_cli("stop", "--socket", n.socket, "--timeout", "30")  # the detached SMP too
        shutil.rmtree(n.store, ignore_errors=True)


class Launch:
    """One `smp launch ...` process (it becomes torchrun), its output in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for var in (
            "ECSNAP_JOB",
            "ECSNAP_SOCKET",
            "SMP_SOCKET",
            "SMP_CONFIG",
            "TORCHELASTIC_RUN_ID",
        ):
            env.pop(var, None)
        self.log = log
        with log.open("ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smp", "launch", *args],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"launch did not finish in {timeout}s:\n{self.output()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # torchrun passes SIGTERM on to its workers
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def wait_for_committed(node: Node, job: str, step: int, run: Launch) -> pb.StatusResponse:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert run.proc.poll() is None, f"the job ended before step {step}:\n{run.output()}"
        if os.path.exists(node.socket):
            try:
                st = report.fetch_status(node.socket, 1.0)
            except report.NotAnswering:
                st = None
            if st is not None:
                found = [j for j in st.jobs if j.job_id == job]
                if found and found[0].has_committed and found[0].committed_step >= step:
                    return st
        time.sleep(0.1)
    raise AssertionError(f"step {step} of {job} was not committed in time:\n{run.output()}")


def test_launch_kill_relaunch_restores_from_the_same_smp(node: Node, workdir: Path) -> None:
    out = workdir / "out"
    torchrun = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "0"]
    script = ["-m", "ecsnap.demo.train", "--out", str(out), "--steps", str(STEPS)]
    command = [*node.launch_args(), *torchrun, *script]
    job = job_id_for(None, {}, [*torchrun, *script])

    first = Launch(command, workdir / "launch1.log")
    try:
        st = wait_for_committed(node, job, 10, first)
        smp_pid = st.pid
        assert os.getsid(smp_pid) == smp_pid  # detached: its own session, not the launcher's
        ranks = next(j for j in st.jobs if j.job_id == job).ranks
        assert len(ranks) == 2
        for rank in ranks:  # kill the trainers, as a crash would
            os.kill(rank.pid, signal.SIGKILL)
        assert first.wait(120) != 0, first.output()
    finally:
        first.stop()
    assert f"started SMP pid {smp_pid}" in first.output()

    after_kill = report.fetch_status(node.socket, 5.0)  # the SMP outlived the job
    assert after_kill.pid == smp_pid
    killed = next(j for j in after_kill.jobs if j.job_id == job)
    assert killed.has_committed and 10 <= killed.committed_step < STEPS - 1

    again = Launch(command, workdir / "launch2.log")
    try:
        assert again.wait(300) == 0, again.output()
    finally:
        again.stop()
    assert f"reusing SMP pid {smp_pid}" in again.output()
    # every rank restored the same step, at least the one committed when the trainers died (a
    # step whose checksums were still being verified at the kill may have committed since)
    restored = {read_restore(out, rank)["step"] for rank in (0, 1)}
    assert len(restored) == 1, (restored, again.output())
    assert killed.committed_step <= restored.pop() < STEPS - 1
    final = report.fetch_status(node.socket, 5.0)
    assert final.pid == smp_pid and [j.job_id for j in final.jobs] == [job]
    assert final.jobs[0].committed_step == STEPS - 1

    stop = smp_cli("stop", "--socket", node.socket)
    assert stop.returncode == 0 and f"stopped SMP pid {smp_pid}" in stop.stderr, stop.stderr
    assert not os.path.exists(node.socket)


def fake_torchrun() -> str:
    """Stands in for torchrun: prints what it was given."""
    code = (
        "import json, os, sys; print(json.dumps([os.environ['ECSNAP_SOCKET'], "
        "os.environ['ECSNAP_JOB'], sys.argv[1:], "
        "os.environ.get('TORCH_DISABLE_SHARE_RDZV_TCP_STORE')]))"
    )
    return shlex.join([sys.executable, "-c", code])


def test_concurrent_launches_start_one_smp_and_status_stop_work(node: Node, workdir: Path) -> None:
    args = [*node.launch_args(), "--torchrun", fake_torchrun(), "--nproc-per-node", "2", "t.py"]
    runs = [Launch([*args, "--seed", str(i)], workdir / f"l{i}.log") for i in range(2)]
    for run in runs:
        assert run.wait(120) == 0, run.output()
    outputs = [run.output() for run in runs]
    st = report.fetch_status(node.socket, 5.0)
    assert sum(f"started SMP pid {st.pid}" in o for o in outputs) == 1, outputs
    assert sum(f"reusing SMP pid {st.pid}" in o for o in outputs) == 1, outputs
    for i, o in enumerate(outputs):
        socket, job, argv, unshared = json.loads(o.strip().splitlines()[-1])
        assert socket == node.socket and job.startswith("t-")
        assert argv == ["--nproc-per-node", "2", "t.py", "--seed", str(i)]
        assert unshared == "1"  # restarted workers never read the last attempt's addresses

    status = smp_cli("status", "--socket", node.socket)
    assert status.returncode == 0 and "(health: SERVING)" in status.stdout, status
    data = json.loads(smp_cli("status", "--socket", node.socket, "--json").stdout)
    assert data["grpc_health"] == "SERVING" and data["pid"] == st.pid

    stop = smp_cli("stop", "--socket", node.socket)
    assert stop.returncode == 0, stop.stderr
    again = smp_cli("stop", "--socket", node.socket)
    assert again.returncode == 0 and "nothing to stop" in again.stderr
    gone = smp_cli("status", "--socket", node.socket, "--timeout", "0.5")
    assert gone.returncode == 2 and "no SMP answered" in gone.stderr


def test_an_smp_that_cannot_start_is_reported_with_its_log(node: Node, workdir: Path) -> None:
    args = [*node.launch_args(memory_limit="900T"), "--torchrun", fake_torchrun(), "t.py"]
    run = Launch(args, workdir / "fail.log")
    assert run.wait(120) == 2, run.output()
    text = run.output()
    assert "exited before serving" in text and str(node.smp_log) in text
    assert "memory-limit" in text.lower() or "memory limit" in text.lower(), text
    assert not os.path.exists(node.socket)


def test_a_finished_job_is_refused_until_fresh(node: Node, workdir: Path) -> None:
    """examples/train.py closes with finished=True: the same command again would train nothing,
    so `smp launch` refuses it and says how to start over; --fresh trains from step 0."""
    pytest.importorskip("torchdata")
    example = str(Path(__file__).resolve().parents[2] / "examples" / "train.py")
    torchrun = ["--standalone", "--nproc-per-node", "1", "--max-restarts", "0"]
    script = [example, "--out", str(workdir / "out"), "--steps", "4"]
    command = [*node.launch_args(), *torchrun, *script]
    job = job_id_for(None, {}, [*torchrun, *script])

    first = Launch(command, workdir / "first.log")
    assert first.wait(180) == 0, first.output()
    st = report.fetch_status(node.socket, 5.0)
    done = next(j for j in st.jobs if j.job_id == job)
    assert done.finished and done.finished_step == 3

    again = Launch(command, workdir / "again.log")
    assert again.wait(60) == 2, again.output()
    assert f"job {job} already finished at step 3" in again.output()
    assert "--fresh" in again.output()

    fresh = Launch(["--fresh", *command], workdir / "fresh.log")
    assert fresh.wait(180) == 0, fresh.output()
    assert f"--fresh: forgot job {job} (finished at step 3" in fresh.output()
    losses = (workdir / "out" / "rank0.losses.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in losses] == [0, 1, 2, 3, 0, 1, 2, 3]
