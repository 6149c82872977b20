"""`ecsnap bench cluster`: parity exchange and node rebuild across real SMPs on loopback, side by
side with raw TCP moving the same bytes.

Four simulated nodes (an SMP process each: own socket, store and gRPC port) hold S bytes each for
one job; this process plays every node's single rank over the SMPs' control sockets (the bytes are
written straight into the arenas, as a trainer does). Measured, per redundancy setting:

- save -> committed: from the moment every node handed its step over until every SMP reports it
  committed (checksums, chunks streamed to the parity holders, parity folded in, announcements);
- parity bytes streamed per node, read from the SMPs' Prometheus counters (expected m x S);
- rebuild: a node's SMP is killed and its memory wiped; a fresh SMP rebuilds the node's data and
  parity from the survivors over gRPC;
- raw TCP: the same byte counts over plain loopback sockets with the same number of concurrent
  streams (the ceiling a transport on this machine reaches), run in the same invocation.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import statistics
import threading
import time
import urllib.request
from concurrent import futures
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ecsnap.arena import MappedArena
from ecsnap.control import ControlClient
from ecsnap.testing import LocalSMP, free_port, short_tmpdir
from smp._proto import snapshot_pb2

NODES = 4
PIECE = 1 << 20


@dataclass
class Figures:
    parity: int
    k: int
    state_bytes: int
    commit_s: list[float]
    sent_per_node: list[int]  # bytes streamed by each node for one snapshot
    tcp_commit_s: float  # raw TCP: every node sends its m x S concurrently
    grpc_commit_s: float  # plain gRPC streams moving the same bytes
    rebuild_s: float
    rebuild_fetched: int
    tcp_rebuild_s: float  # raw TCP: the fetched bytes over k concurrent streams
    grpc_rebuild_s: float
    smp_cpu_s: float = 0.0  # CPU seconds of all SMPs over the measured snapshots
    rebuild_rss_growth: int = 0  # the fresh SMP's peak RSS over its RSS before the rebuild
    rebuild_installed: int = 0  # bytes the rebuild installs: the node's blob and its parity

    def summary(self) -> dict[str, float]:
        commit = statistics.median(self.commit_s)
        traffic = sum(self.sent_per_node)
        return {
            "commit_s": commit,
            "commit_GBps": traffic / commit / 1e9,
            "tcp_commit_GBps": traffic / self.tcp_commit_s / 1e9,
            "commit_vs_tcp": self.tcp_commit_s / commit,
            "grpc_commit_GBps": traffic / self.grpc_commit_s / 1e9,
            "commit_vs_grpc": self.grpc_commit_s / commit,
            "sent_per_node_over_S": statistics.mean(self.sent_per_node) / self.state_bytes,
            "rebuild_s": self.rebuild_s,
            "rebuild_GBps": self.rebuild_fetched / self.rebuild_s / 1e9,
            "tcp_rebuild_GBps": self.rebuild_fetched / self.tcp_rebuild_s / 1e9,
            "rebuild_vs_tcp": self.tcp_rebuild_s / self.rebuild_s,
            "grpc_rebuild_GBps": self.rebuild_fetched / self.grpc_rebuild_s / 1e9,
            "rebuild_vs_grpc": self.grpc_rebuild_s / self.rebuild_s,
            "rebuild_rss_over_installed": self.rebuild_rss_growth / max(self.rebuild_installed, 1),
            # SMP CPU per GiB of state protected (every node's S, per snapshot)
            "smp_cpu_s_per_GiB": self.smp_cpu_s
            / (NODES * self.state_bytes * len(self.commit_s) / 2**30),
        }


# -- raw TCP baseline -------------------------------------------------------------------------


def tcp_transfer(sizes: list[int]) -> float:
    """Seconds to move sizes[i] bytes over len(sizes) concurrent loopback TCP connections."""
    payload = memoryview(np.random.default_rng(0).integers(0, 256, PIECE, dtype=np.uint8).data)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def receive(conn: socket.socket, n: int) -> None:
        buf = bytearray(PIECE)
        got = 0
        with conn:
            while got < n:
                r = conn.recv_into(buf, min(PIECE, n - got))
                if r == 0:
                    errors.append(EOFError(f"sender closed after {got} of {n} bytes"))
                    return
                got += r

    def send(n: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            left = n
            while left:
                s.sendall(payload[: min(PIECE, left)])
                left -= min(PIECE, left)

    start = time.perf_counter()
    senders = [threading.Thread(target=send, args=(n,)) for n in sizes]
    for t in senders:
        t.start()
    receivers = []
    for n in sizes:
        conn, _ = listener.accept()
        r = threading.Thread(target=receive, args=(conn, n))
        r.start()
        receivers.append(r)
    for t in [*senders, *receivers]:
        t.join()
    seconds = time.perf_counter() - start
    listener.close()
    if errors:
        raise errors[0]
    return seconds


def _grpc_sink(conn: Any) -> None:
    """Child process: a gRPC server whose one client-streaming method drops what it receives."""
    server = grpc.server(
        futures.ThreadPoolExecutor(16),
        options=[("grpc.max_receive_message_length", 64 << 20)],
    )

    def drain(requests: Any, context: Any) -> bytes:
        for _ in requests:
            pass
        return b""

    handler = grpc.method_handlers_generic_handler(
        "sink", {"Drain": grpc.stream_unary_rpc_method_handler(drain)}
    )
    server.add_generic_rpc_handlers((handler,))
    conn.send(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    conn.recv()  # until the parent is done
    server.stop(0)


def grpc_transfer(sizes: list[int]) -> float:
    """Seconds to stream sizes[i] bytes in 1 MiB messages over len(sizes) concurrent plain gRPC
    calls into another process that does nothing with them: the transport's own ceiling."""
    import multiprocessing

    parent, child = multiprocessing.get_context("spawn").Pipe()
    proc = multiprocessing.get_context("spawn").Process(target=_grpc_sink, args=(child,))
    proc.start()
    try:
        port = parent.recv()
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
        drain = channel.stream_unary("/sink/Drain", None, None)  # raw bytes both ways
        payload = bytes(PIECE)

        def send(n: int) -> None:
            drain((payload[: min(PIECE, n - at)] for at in range(0, n, PIECE)), timeout=600)

        send(PIECE)  # connect first
        start = time.perf_counter()
        threads = [threading.Thread(target=send, args=(n,)) for n in sizes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        channel.close()
        return seconds
    finally:
        parent.send(None)
        proc.join(10)


# -- driving the SMPs as the job's ranks ------------------------------------------------------


class Node:
    def __init__(self, root: Path, index: int, limit: str) -> None:
        self.index = index
        self.root = root
        self.limit = limit
        self.metrics_port = 0
        self.smp: LocalSMP | None = None
        self.channel: ControlClient | None = None
        self.address = ""

    def start(self, generation: int = 0) -> None:
        self.metrics_port = free_port()
        self.smp = LocalSMP(
            self.root / f"node{self.index}-{generation}",
            memory_limit=self.limit,
            extra_args=("--metrics-port", str(self.metrics_port)),
        ).start()

    def join(self, job: str) -> None:
        assert self.smp is not None
        if self.channel is not None:
            self.channel.close()
        self.channel = ControlClient(self.smp.socket, job, 120.0)
        reply = self.channel.register(
            self.index, NODES, 0, 1, self.index, NODES, os.getpid(), "bench"
        )
        self.address = reply.grpc_address

    def metric(self, name: str, job: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(f'{name}{{job="{job}"}}'):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.smp is not None:
            self.smp.close()


def configure(nodes: list[Node], m: int) -> None:
    secret = secrets.token_bytes(32)
    addresses = [n.address for n in nodes]
    for n in nodes:
        assert n.channel is not None
        n.channel.configure(n.index, NODES, NODES, m, "consecutive", addresses, secret)


def save_everywhere(nodes: list[Node], step: int, size: int, fill: list[np.ndarray]) -> float:
    """Every node writes `size` bytes as `step` and hands it over; seconds until committed."""
    grants = []
    for n in nodes:
        assert n.channel is not None
        g = n.channel.begin_save(n.index, step, size)
        arena = MappedArena(g.path, g.capacity)
        try:
            arena.tensor.numpy()[:size] = fill[n.index]
        finally:
            arena.close()
        grants.append(g)
    manifest = snapshot_pb2.Manifest().SerializeToString()
    start = time.perf_counter()
    for n, g in zip(nodes, grants, strict=True):
        assert n.channel is not None
        n.channel.commit_save(n.index, step, g, size, manifest)
    for n in nodes:
        assert n.channel is not None
        r = n.channel.wait_committed(step, 120_000, timeout=130.0)
        if not r.committed:
            raise TimeoutError(f"step {step} did not commit on node {n.index} within 120 s")
    return time.perf_counter() - start


def run_setting(root: Path, m: int, size: int, repeats: int, limit: str) -> Figures:
    job = f"bench-m{m}"
    nodes = [Node(root / f"m{m}", i, limit) for i in range(NODES)]
    rng = np.random.default_rng(m)
    fill = [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(NODES)]
    k = NODES - m
    try:
        for n in nodes:
            n.start()
            n.join(job)
        configure(nodes, m)
        save_everywhere(nodes, 0, size, fill)  # first touch of the arenas and parity cells
        sent_before = [n.metric("ecsnap_parity_sent_bytes_total", job) for n in nodes]
        cpu_before = sum(n.smp.cpu_seconds() for n in nodes if n.smp is not None)
        commit = [save_everywhere(nodes, 1 + r, size, fill) for r in range(repeats)]
        cpu_s = sum(n.smp.cpu_seconds() for n in nodes if n.smp is not None) - cpu_before
        sent_after = [n.metric("ecsnap_parity_sent_bytes_total", job) for n in nodes]
        sent = [int((a - b) / repeats) for a, b in zip(sent_after, sent_before, strict=True)]
        tcp_commit = statistics.median(tcp_transfer(sent) for _ in range(repeats))
        grpc_commit = statistics.median(grpc_transfer(sent) for _ in range(repeats))

        lost = nodes[1]
        lost.close()
        lost.start(generation=1)
        for n in nodes:
            n.join(job)
        configure(nodes, m)  # the job's relaunch introduces the fresh SMP
        assert lost.channel is not None and lost.smp is not None
        before = lost.smp.memory()["VmRSS"]
        started = time.perf_counter()
        r = lost.channel.rebuild(600.0)
        rebuild_s = time.perf_counter() - started
        growth = lost.smp.memory()["VmHWM"] - before
        installed = size + size * m // k  # its blob and its m/k share of parity
        if not r.rebuilt or r.step != repeats:
            raise RuntimeError(f"rebuild did not restore step {repeats}: {r}")
        listed = lost.channel.list_steps(lost.index)
        if repeats not in listed.complete:
            raise RuntimeError("the rebuilt node does not serve the committed step")
        # The same bytes, spread like the rebuild fetches them: k concurrent streams.
        share = [r.bytes_fetched // k] * k
        tcp_rebuild = statistics.median(tcp_transfer(share) for _ in range(repeats))
        grpc_rebuild = statistics.median(grpc_transfer(share) for _ in range(repeats))
        return Figures(
            m,
            k,
            size,
            commit,
            sent,
            tcp_commit,
            grpc_commit,
            rebuild_s,
            r.bytes_fetched,
            tcp_rebuild,
            grpc_rebuild,
            cpu_s,
            growth,
            installed,
        )
    finally:
        for n in nodes:
            n.close()


def render(results: list[Figures]) -> str:
    head = (
        f"{'g/m':>5} {'S':>7} | {'commit':>8} {'GB/s':>5} {'TCP':>5} {'gRPC':>5} {'/TCP':>5} "
        f"{'/gRPC':>5} {'sent/S':>6} | {'rebuild':>8} {'GB/s':>5} {'TCP':>5} {'gRPC':>5} "
        f"{'/TCP':>5} {'/gRPC':>5}"
    )
    lines = [head]
    memory = []
    for f in results:
        s = f.summary()
        lines.append(
            f"{f'{NODES}/{f.parity}':>5} {f.state_bytes / 2**20:>5.0f}Mi | "
            f"{s['commit_s']:>7.3f}s {s['commit_GBps']:>5.2f} {s['tcp_commit_GBps']:>5.2f} "
            f"{s['grpc_commit_GBps']:>5.2f} {s['commit_vs_tcp']:>5.2f} "
            f"{s['commit_vs_grpc']:>5.2f} {s['sent_per_node_over_S']:>6.2f} | "
            f"{s['rebuild_s']:>7.3f}s {s['rebuild_GBps']:>5.2f} {s['tcp_rebuild_GBps']:>5.2f} "
            f"{s['grpc_rebuild_GBps']:>5.2f} {s['rebuild_vs_tcp']:>5.2f} "
            f"{s['rebuild_vs_grpc']:>5.2f}"
        )
        memory.append(
            f"  {NODES}/{f.parity}: the rebuilding SMP's peak RSS grew by "
            f"{f.rebuild_rss_growth / 2**20:.0f} MiB while installing "
            f"{f.rebuild_installed / 2**20:.0f} MiB ({s['rebuild_rss_over_installed']:.2f}x)"
        )
    cpu = [
        f"  {NODES}/{f.parity}: {f.summary()['smp_cpu_s_per_GiB']:.2f} SMP CPU-s per GiB protected"
        for f in results
    ]
    return "\n".join(
        [
            *lines,
            "rebuild memory (target: at most what it installs + a constant):",
            *memory,
            "SMP CPU while protecting (all SMPs; one memcpy here is ~0.07 s/GiB):",
            *cpu,
        ]
    )


def run_cluster(size: int, repeats: int, parities: list[int], json_path: str | None) -> int:
    root = short_tmpdir("ecsnap-bc-")
    limit = f"{max(1, (size * 4) >> 20) + 64}M"
    print(
        f"{NODES} SMPs on loopback, one job, S = {size / 2**20:.0f} MiB per node, "
        f"{repeats} snapshots per setting (median); raw TCP moves the same bytes alongside"
    )
    results = [run_setting(root, m, size, repeats, limit) for m in parities]
    print(render(results))
    print(
        "commit: save handed over -> committed on all nodes (checksums, chunks streamed, "
        "parity folded in); GB/s: parity bytes of all nodes / time; TCP, gRPC: the same bytes "
        "over raw loopback sockets / plain gRPC streams into a no-op process, same concurrency; "
        "/TCP, /gRPC: ecsnap's throughput as a fraction of theirs; sent/S: parity traffic per "
        "node per snapshot (target m); rebuild: a fresh SMP fetches and decodes a lost node's "
        "data and parity (GB/s of bytes fetched)"
    )
    if json_path:
        Path(json_path).write_text(
            json.dumps(
                [{**asdict(f), **f.summary()} for f in results],
                indent=2,
            )
        )
    return 0
