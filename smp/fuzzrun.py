"""`smp bench fuzz` and the fuzz tests: two real SMPs, a real 2-node job, then fuzz cases
(`smp.fuzzing`) against node 0's control socket and peer port, with the job committing between
batches. Ends with the checks: node 0 still serves, its memory did not grow past its arena limit,
the job's first snapshot is byte for byte what it saved, and the job committed every batch."""

from __future__ import annotations

import argparse
import json
import mmap
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq

from smp._proto import control_pb2 as pb
from smp._proto import snapshot_pb2
from smp.fuzzing import (
    FUZZ_JOB,
    FUZZ_KEY,
    Credentials,
    Target,
    control_cases,
    peer_cases,
    rss_bytes,
    run_cases,
)
from smp.testing import LocalSMP, short_tmpdir

REAL_JOB = "real-job"
REAL_KEY = b"real-job-key-0123456789abcdef"
SIZE = 256 << 10
LIMIT = "64M"


class RawClient:
    """One job's requests to one SMP, as plain control.proto (the fuzzer needs no torch)."""

    def __init__(self, socket: str, job: str, key: bytes) -> None:
        self.job, self.key = job, key
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(f"ipc://{socket}")
        self._ids = 0

    def call(self, kind: str, body: Any, timeout_s: float = 30.0) -> pb.Response:
        self._ids += 1
        request = pb.Request(request_id=self._ids, job_id=self.job, job_key=self.key)
        getattr(request, kind).CopyFrom(body)
        self._sock.send(request.SerializeToString())
        deadline = time.monotonic() + timeout_s
        while self._sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            reply = pb.Response()
            reply.ParseFromString(self._sock.recv())
            if reply.request_id != self._ids:
                continue
            if reply.HasField("error"):
                raise RuntimeError(f"{kind} for {self.job}: {reply.error.message}")
            return reply
        raise TimeoutError(f"{kind} for {self.job}: no answer within {timeout_s} s")

    def close(self) -> None:
        self._sock.close(linger=0)


def _join(
    nodes: list[LocalSMP], job: str, key: bytes, secret: bytes
) -> tuple[list[RawClient], list[str]]:
    clients = [RawClient(n.socket, job, key) for n in nodes]
    addresses = []
    for i, c in enumerate(clients):
        reg = pb.RegisterRequest(
            rank=i, world_size=2, local_world_size=1, node_rank=i, num_nodes=2, pid=os.getpid()
        )
        addresses.append(c.call("register", reg).register.grpc_address)
    for i, c in enumerate(clients):
        c.call(
            "configure",
            pb.ConfigureRequest(
                node_rank=i,
                num_nodes=2,
                group_size=2,
                parity=1,
                placement="consecutive",
                peer_addresses=addresses,
                secret=secret,
            ),
        )
    return clients, addresses


def _fill(step: int, rank: int) -> bytes:
    return bytes([(step * 7 + rank) % 251]) * SIZE


def _commit(clients: list[RawClient], step: int) -> None:
    grants = []
    for i, c in enumerate(clients):
        g = c.call("begin_save", pb.BeginSaveRequest(rank=i, step=step, nbytes=SIZE)).begin_save
        with open(g.path, "r+b") as f, mmap.mmap(f.fileno(), g.capacity) as m:
            m[:SIZE] = _fill(step, i)
        grants.append(g)
    manifest = snapshot_pb2.Manifest().SerializeToString()
    for i, (c, g) in enumerate(zip(clients, grants, strict=True)):
        c.call(
            "commit_save",
            pb.CommitSaveRequest(
                rank=i,
                step=step,
                slot=g.slot,
                generation=g.generation,
                nbytes=SIZE,
                manifest=manifest,
            ),
        )
    for c in clients:
        r = c.call("wait_committed", pb.WaitCommittedRequest(step=step, timeout_ms=30_000), 35.0)
        if not r.wait_committed.committed:
            raise AssertionError(f"the real job's step {step} did not commit")


def _read(client: RawClient, rank: int, step: int) -> bytes:
    o = client.call("open_snapshot", pb.OpenSnapshotRequest(rank=rank, step=step)).open_snapshot
    with open(o.path, "rb") as f:
        return f.read(SIZE)


@dataclass
class FuzzReport:
    control_cases: int
    peer_cases: int
    seconds: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    steps_committed: int = 0
    answers: dict[str, int] = field(default_factory=dict)


def fuzz(root: Path, control: int, peer: int, seed: int, batches: int = 4) -> FuzzReport:
    """Run the cases; raises AssertionError when a property fails."""
    nodes = [LocalSMP(root / f"node{i}", memory_limit=LIMIT).start() for i in range(2)]
    out = FuzzReport(control, peer)
    clients: list[RawClient] = []
    try:
        clients, addresses = _join(nodes, REAL_JOB, REAL_KEY, secrets.token_bytes(32))
        fuzz_secret = secrets.token_bytes(32)
        clients += _join(nodes, FUZZ_JOB, FUZZ_KEY, fuzz_secret)[0]
        _commit(clients[:2], 1)
        creds = Credentials(REAL_JOB, fuzz_secret)
        assert nodes[0].proc is not None
        pid = nodes[0].proc.pid
        target = Target(nodes[0].socket, addresses[0])
        out.rss_before = rss_bytes(pid)
        start = time.perf_counter()
        try:
            for batch in range(batches):
                run_cases(control_cases(creds), target.control, control // batches, seed + batch)
                run_cases(peer_cases(creds), target.peer, peer // batches, seed + batch)
                _commit(clients[:2], batch + 2)  # the real job keeps committing
                out.steps_committed += 1
        finally:
            out.answers = dict(sorted(target.answered.items()))
            target.close()
        out.seconds = time.perf_counter() - start
        out.rss_after = rss_bytes(pid)
        assert nodes[0].proc.poll() is None, f"node 0's SMP died:\n{nodes[0].tail()}"
        growth = out.rss_after - out.rss_before
        assert growth < (64 << 20) + (64 << 20), f"node 0's SMP grew by {growth >> 20} MiB"
        last = batches + 1
        assert _read(clients[0], 0, last) == _fill(last, 0), "the real job's snapshot changed"
        assert "Traceback" not in nodes[0].log.read_text(), nodes[0].tail(60)
        return out
    finally:
        for c in clients:
            c.close()
        for n in nodes:
            n.close()


def run(args: argparse.Namespace) -> int:
    root = short_tmpdir("ecsnap-fuzz-")
    try:
        report = fuzz(root, args.cases // 2, args.cases - args.cases // 2, args.seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"smp bench fuzz: {report.control_cases} control and {report.peer_cases} peer cases in "
        f"{report.seconds:.1f} s; node 0 RSS {report.rss_before >> 20} -> "
        f"{report.rss_after >> 20} MiB; the real job committed {report.steps_committed} more "
        "steps and its snapshot is intact"
    )
    print("  answers: " + ", ".join(f"{k} {v}" for k, v in report.answers.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0
