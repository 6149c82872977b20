"""A real `smp serve` process: wire robustness, status, shutdown, and the client's error paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zmq

import ecsnap
from ecsnap.testing import LocalSMP
from smp._proto import control_pb2 as pb

pytestmark = pytest.mark.timeout(120)


def raw_call(socket: str, frames: list[bytes], timeout_ms: int = 5000) -> pb.Response:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{socket}")
        sock.send_multipart(frames)
        assert sock.poll(timeout_ms), "the SMP did not answer"
        resp = pb.Response()
        resp.ParseFromString(sock.recv())
        return resp
    finally:
        sock.close()


def smp_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smp", *args], capture_output=True, text=True, timeout=60
    )


def test_bad_messages_get_errors_and_daemon_keeps_serving(smp_node: LocalSMP) -> None:
    cases = [
        ([b"\xff\xfe not protobuf"], pb.BAD_REQUEST, "malformed"),
        ([pb.Request(request_id=3).SerializeToString()], pb.BAD_REQUEST, "empty or unknown"),
        ([b"a", b"b"], pb.BAD_REQUEST, "one frame"),
        (
            [
                pb.Request(
                    request_id=4,
                    job_id="nojob",
                    begin_save=pb.BeginSaveRequest(rank=0, step=1, nbytes=10),
                ).SerializeToString()
            ],
            pb.NOT_REGISTERED,
            "register",
        ),
        (
            [
                pb.Request(
                    request_id=5,
                    job_id="bad/../id",
                    register=pb.RegisterRequest(world_size=1, local_world_size=1, num_nodes=1),
                ).SerializeToString()
            ],
            pb.BAD_REQUEST,
            "job id",
        ),
        (
            [
                pb.Request(
                    request_id=6,
                    job_id="j",
                    wait_committed=pb.WaitCommittedRequest(step=1, timeout_ms=10),
                ).SerializeToString()
            ],
            pb.NOT_REGISTERED,  # the same answer as for a job bound to another key
            "not registered",
        ),
    ]
    for frames, code, words in cases:
        resp = raw_call(smp_node.socket, frames)
        assert resp.error.code == code, resp
        assert words in resp.error.message
    # Out-of-range slot for a registered rank.
    reg = pb.Request(
        request_id=7,
        job_id="j",
        register=pb.RegisterRequest(rank=0, world_size=1, local_world_size=1, num_nodes=1),
    )
    assert not raw_call(smp_node.socket, [reg.SerializeToString()]).HasField("error")
    commit = pb.Request(
        request_id=8,
        job_id="j",
        commit_save=pb.CommitSaveRequest(rank=0, step=1, slot=99, generation=1, nbytes=1),
    )
    resp = raw_call(smp_node.socket, [commit.SerializeToString()])
    assert resp.error.code == pb.BAD_REQUEST and "slot 99" in resp.error.message
    status = smp_cli("status", "--socket", smp_node.socket, "--json")
    assert status.returncode == 0 and '"job_id": "j"' in status.stdout
    assert smp_node.proc is not None and smp_node.proc.poll() is None


def test_status_of_a_missing_daemon_fails_clearly(workdir: Path) -> None:
    run = smp_cli("status", "--socket", str(workdir / "nobody.sock"), "--timeout", "0.5")
    assert run.returncode != 0 and "no SMP answered" in run.stderr


def test_sigterm_shuts_down_cleanly(workdir: Path) -> None:
    node = LocalSMP(workdir / "n").start()
    try:
        assert node.stop(signal.SIGTERM) == 0
        assert not os.path.exists(node.socket)
        assert "SMP stopped" in node.tail()
    finally:
        node.close()


def test_too_small_store_is_reported_at_start(workdir: Path) -> None:
    run = smp_cli(
        "serve",
        "--socket",
        str(workdir / "s.sock"),
        "--store-dir",
        str(workdir / "st"),
        "--memory-limit",
        "1000T",
    )
    assert run.returncode == 2 and "exceeds the free space" in run.stderr


def test_unreachable_smp_names_the_socket(workdir: Path) -> None:
    path = str(workdir / "absent.sock")
    with pytest.raises(ecsnap.SMPUnavailableError, match=path):
        ecsnap.Snapshotter(socket=path).save(0, {"x": torch.ones(1)})


def test_memory_limit_refusal_loses_nothing(smp_node: LocalSMP) -> None:
    with ecsnap.Snapshotter(job_id="lim", socket=smp_node.socket) as snap:
        small = {"x": torch.arange(1000.0)}
        snap.save(1, small).wait_protected(timeout=30)
        with pytest.raises(ecsnap.MemoryLimitError, match="limit"):
            snap.save(2, {"x": torch.zeros(80 << 20)})  # 320 MiB > the 256M limit
        state = {"x": torch.zeros(1000)}
        assert snap.restore(state) == 1
        assert torch.equal(state["x"], torch.arange(1000.0))


def test_corrupted_newest_step_falls_back_to_older(smp_node: LocalSMP) -> None:
    with ecsnap.Snapshotter(job_id="cor", socket=smp_node.socket) as snap:
        snap.save(1, {"x": torch.full((1000,), 1.0)}).wait_protected(timeout=30)
        snap.save(2, {"x": torch.full((1000,), 2.0)}).wait_protected(timeout=30)
    arenas = sorted(Path(smp_node.store_dir, "cor").glob("*.arena"))
    newest = max(arenas, key=lambda p: p.with_suffix(".meta").stat().st_mtime)
    with newest.open("r+b") as f:
        f.seek(8)
        f.write(b"\x42")
    with ecsnap.Snapshotter(job_id="cor", socket=smp_node.socket) as snap:
        state = {"x": torch.zeros(1000)}
        assert snap.restore(state) == 1
        assert torch.equal(state["x"], torch.full((1000,), 1.0))
    assert "checksum mismatch" in smp_cli("status", "--socket", smp_node.socket).stdout


def test_restarted_smp_readopts_snapshots(workdir: Path) -> None:
    node = LocalSMP(workdir / "n").start()
    try:
        with ecsnap.Snapshotter(job_id="re", socket=node.socket) as snap:
            snap.save(4, {"x": torch.arange(10.0)}).wait_protected(timeout=30)
        node.stop()
        node.start()
        with ecsnap.Snapshotter(job_id="re", socket=node.socket) as snap:
            state = {"x": torch.zeros(10)}
            assert snap.restore(state) == 4
            assert torch.equal(state["x"], torch.arange(10.0))
    finally:
        node.close()


def test_background_errors_reach_the_next_call(smp_node: LocalSMP) -> None:
    with ecsnap.Snapshotter(job_id="err", socket=smp_node.socket) as snap:
        snap.save(1, {"x": torch.ones(10)}).wait_protected(timeout=30)
        smp_node.stop()  # the commit of the next save cannot reach the SMP
        snap._session.client._channel.timeout = 2.0
        snap._session.worker._channel.timeout = 2.0
        with pytest.raises(ecsnap.SMPUnavailableError):
            snap.save(2, {"x": torch.ones(10)})
