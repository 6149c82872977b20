"""`ecsnap bench cluster`: parity exchange and node-loss restore across real SMPs on loopback, side
by side with raw TCP and plain gRPC moving the same bytes.

N simulated nodes (an SMP process each: own socket, store and gRPC port; groups of g with m parity)
hold S bytes each for one job; this process plays every node's single rank over the SMPs' control
sockets (the bytes are written straight into the arenas, as a trainer does). Measured, per setting:

- protect: from the moment every node handed its step over until every SMP reports it committed
  (checksums, chunks streamed to the parity holders, parity folded in, announcements);
- parity bytes streamed per node, read from the SMPs' Prometheus counters (expected m x S), and
  the SMPs' CPU-seconds per GiB protected;
- restore after a node loss: a node's SMP is killed and its memory wiped; a fresh SMP rebuilds the
  node's data and parity from the survivors over gRPC, then the rank opens (verifies) and copies
  out its snapshot, as `Snapshotter.restore()` does;
- raw TCP: the same byte counts over plain loopback sockets with the same number of concurrent
  streams, read from and written to buffers of the transfer's full size (as a data plane must:
  a 1 MiB buffer sent again and again would stay in cache and flatter the wire);
- plain gRPC: the same bytes as 1 MiB messages into a process that drops them (grpcio's own
  ceiling on this machine, the floor under anything built on it).

`--scaling` runs 2, 4 and 8 nodes in groups of 4 (per-node traffic and CPU per snapshot should not
grow with N); `--tls` repeats the settings with mutual TLS on the peer port; `--parity-bandwidth`
runs one capped setting and prints the parity rate each SMP reached against the cap.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ecsnap.arena import MappedArena
from ecsnap.control import ControlClient
from ecsnap.testing import LocalSMP, free_port, short_tmpdir
from smp._proto import snapshot_pb2

PIECE = 1 << 20


@dataclass(frozen=True)
class Setting:
    """One cluster shape: N nodes in groups of `group` with `parity` parity cells per stripe."""

    nodes: int
    group: int
    parity: int
    tls: bool = False
    bandwidth: float | None = None  # --parity-bandwidth of every SMP, bytes/s

    @property
    def k(self) -> int:
        return self.group - self.parity

    @property
    def name(self) -> str:
        cap = f" cap {self.bandwidth / 1e6:.0f}MB/s" if self.bandwidth else ""
        return f"{self.nodes}n {self.group}/{self.parity}{' tls' if self.tls else ''}{cap}"


@dataclass
class Figures:
    setting: Setting
    state_bytes: int
    commit_s: list[float]
    sent_per_node: list[int]  # bytes streamed by each node for one snapshot
    tcp_commit_s: float  # raw TCP: every node sends its m x S concurrently
    grpc_commit_s: float  # plain gRPC streams moving the same bytes
    rebuild_s: float  # the fresh SMP's rebuild alone
    restore_s: float  # rebuild + open (verify) + copy out: the relaunched rank's restore
    rebuild_fetched: int
    tcp_rebuild_s: float  # raw TCP: the fetched bytes over k concurrent streams
    grpc_rebuild_s: float
    smp_cpu_s: float = 0.0  # CPU seconds of all SMPs over the measured snapshots
    rebuild_rss_growth: int = 0  # the fresh SMP's peak RSS over its RSS before the rebuild
    rebuild_installed: int = 0  # bytes the rebuild installs: the node's blob and its parity
    send_rate: list[float] = field(default_factory=list)  # per node: parity bytes / send time

    def summary(self) -> dict[str, float]:
        commit = statistics.median(self.commit_s)
        traffic = sum(self.sent_per_node)
        n = self.setting.nodes
        return {
            "commit_s": commit,
            "commit_GBps": traffic / commit / 1e9,
            "tcp_commit_GBps": traffic / self.tcp_commit_s / 1e9,
            "commit_vs_tcp": self.tcp_commit_s / commit,
            "grpc_commit_GBps": traffic / self.grpc_commit_s / 1e9,
            "commit_vs_grpc": self.grpc_commit_s / commit,
            "sent_per_node_over_S": statistics.mean(self.sent_per_node) / self.state_bytes,
            "rebuild_s": self.rebuild_s,
            "restore_s": self.restore_s,
            "restore_GBps": self.rebuild_fetched / self.restore_s / 1e9,
            "tcp_rebuild_GBps": self.rebuild_fetched / self.tcp_rebuild_s / 1e9,
            "restore_vs_tcp": self.tcp_rebuild_s / self.restore_s,
            "grpc_rebuild_GBps": self.rebuild_fetched / self.grpc_rebuild_s / 1e9,
            "restore_vs_grpc": self.grpc_rebuild_s / self.restore_s,
            "rebuild_rss_over_installed": self.rebuild_rss_growth / max(self.rebuild_installed, 1),
            # SMP CPU per GiB of state protected (every node's S, per snapshot)
            "smp_cpu_s_per_GiB": self.smp_cpu_s
            / (n * self.state_bytes * len(self.commit_s) / 2**30),
            # one node's SMP, per snapshot (the scaling figure: constant in N)
            "node_cpu_s_per_snapshot": self.smp_cpu_s / n / len(self.commit_s),
        }


# -- baselines: raw TCP and plain gRPC --------------------------------------------------------


def tcp_transfer(sizes: list[int]) -> float:
    """Seconds to move sizes[i] bytes over len(sizes) concurrent loopback TCP connections, each
    from a source buffer of its full size into a destination of its full size (pre-faulted)."""
    sources = [
        np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8) for i, n in enumerate(sizes)
    ]
    targets = [np.ones(n, dtype=np.uint8) for n in sizes]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def receive(conn: socket.socket, target: np.ndarray) -> None:
        view = memoryview(target.data).cast("B")
        got, n = 0, len(view)
        with conn:
            while got < n:
                r = conn.recv_into(view[got : got + PIECE])
                if r == 0:
                    errors.append(EOFError(f"sender closed after {got} of {n} bytes"))
                    return
                got += r

    def send(source: np.ndarray) -> None:
        view = memoryview(source.data).cast("B")
        with socket.create_connection(("127.0.0.1", port)) as s:
            for at in range(0, len(view), PIECE):
                s.sendall(view[at : at + PIECE])

    start = time.perf_counter()
    senders = [threading.Thread(target=send, args=(src,)) for src in sources]
    for t in senders:
        t.start()
    receivers = []
    for target in targets:
        conn, _ = listener.accept()
        r = threading.Thread(target=receive, args=(conn, target))
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
        source = np.random.default_rng(0).integers(0, 256, max(sizes), dtype=np.uint8)
        view = memoryview(source.data).cast("B")

        def send(n: int) -> None:
            # One copy per message, from a buffer of the transfer's size: what gRPC needs.
            drain((bytes(view[at : min(at + PIECE, n)]) for at in range(0, n, PIECE)), timeout=600)

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
    def __init__(self, root: Path, index: int, limit: str, extra: tuple[str, ...]) -> None:
        self.index = index
        self.root = root
        self.limit = limit
        self.extra = extra
        self.metrics_port = 0
        self.smp: LocalSMP | None = None
        self.channel: ControlClient | None = None
        self.address = ""

    def start(self, generation: int = 0) -> None:
        self.metrics_port = free_port()
        self.smp = LocalSMP(
            self.root / f"node{self.index}-{generation}",
            memory_limit=self.limit,
            extra_args=("--metrics-port", str(self.metrics_port), *self.extra),
        ).start()

    def join(self, job: str, nodes: int) -> None:
        assert self.smp is not None
        if self.channel is not None:
            self.channel.close()
        self.channel = ControlClient(self.smp.socket, job, 120.0)
        reply = self.channel.register(
            self.index, nodes, 0, 1, self.index, nodes, os.getpid(), "bench"
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


def configure(nodes: list[Node], setting: Setting) -> None:
    secret = secrets.token_bytes(32)
    addresses = [n.address for n in nodes]
    for n in nodes:
        assert n.channel is not None
        n.channel.configure(
            n.index, len(nodes), setting.group, setting.parity, "consecutive", addresses, secret
        )


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


def restore_rank(node: Node, step: int, size: int, expected: np.ndarray) -> float:
    """What a relaunched rank's restore does after the rebuild: open its snapshot (the SMP
    verifies its checksums) and copy the bytes out of the mapped arena into live memory (a
    trainer's tensors exist before it restores: the destination is pre-faulted, as the raw TCP
    baseline's is). Returns the seconds of that; the bytes are then checked bit for bit."""
    assert node.channel is not None
    out = np.ones(size, dtype=np.uint8)
    started = time.perf_counter()
    opened = node.channel.open_snapshot(node.index, step)
    arena = MappedArena(opened.path, opened.nbytes, populate=False)
    try:
        out[:] = arena.tensor.numpy()[:size]
    finally:
        arena.close(background=True)
    seconds = time.perf_counter() - started
    if not np.array_equal(out, expected):
        raise RuntimeError(f"node {node.index}'s restored bytes differ from what it saved")
    return seconds


def make_pki(root: Path) -> tuple[str, ...]:
    """A throwaway CA and one certificate for 127.0.0.1 (openssl): `smp serve` TLS flags."""
    root.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bench-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (root / "smp.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=smp", "-keyout", "smp.key",
        "-out", "smp.csr")  # fmt: skip
    run("x509", "-req", "-in", "smp.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "smp.ext", "-out", "smp.pem")  # fmt: skip
    return ("--tls-cert", str(root / "smp.pem"), "--tls-key", str(root / "smp.key"),
            "--tls-ca", str(root / "ca.pem"))  # fmt: skip


def run_setting(
    root: Path, setting: Setting, size: int, repeats: int, limit: str, baselines: bool = True
) -> Figures:
    n_nodes, m, k = setting.nodes, setting.parity, setting.k
    job = f"bench-{n_nodes}n-g{setting.group}-m{m}"
    here = root / job / ("tls" if setting.tls else "plain") / f"cap{setting.bandwidth or 0:.0f}"
    extra: tuple[str, ...] = make_pki(here / "pki") if setting.tls else ()
    if setting.bandwidth:
        extra += ("--parity-bandwidth", f"{setting.bandwidth:.0f}")
    nodes = [Node(here, i, limit, extra) for i in range(n_nodes)]
    rng = np.random.default_rng(n_nodes * 10 + m)
    fill = [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(n_nodes)]
    try:
        for n in nodes:
            n.start()
            n.join(job, n_nodes)
        configure(nodes, setting)
        save_everywhere(nodes, 0, size, fill)  # first touch of the arenas and parity cells
        sent_before = [n.metric("ecsnap_parity_sent_bytes_total", job) for n in nodes]
        cpu_before = sum(n.smp.cpu_seconds() for n in nodes if n.smp is not None)
        commit = [save_everywhere(nodes, 1 + r, size, fill) for r in range(repeats)]
        cpu_s = sum(n.smp.cpu_seconds() for n in nodes if n.smp is not None) - cpu_before
        sent_after = [n.metric("ecsnap_parity_sent_bytes_total", job) for n in nodes]
        sent = [int((a - b) / repeats) for a, b in zip(sent_after, sent_before, strict=True)]
        rates = [x / statistics.median(commit) for x in sent]
        tcp_commit = grpc_commit = 0.0
        if baselines:
            tcp_commit = statistics.median(tcp_transfer(sent) for _ in range(repeats))
            grpc_commit = statistics.median(grpc_transfer(sent) for _ in range(repeats))

        lost = nodes[1]
        lost.close()
        lost.start(generation=1)
        for n in nodes:
            n.join(job, n_nodes)
        configure(nodes, setting)  # the job's relaunch introduces the fresh SMP
        assert lost.channel is not None and lost.smp is not None
        before = lost.smp.memory()["VmRSS"]
        started = time.perf_counter()
        r = lost.channel.rebuild(600.0)
        rebuild_s = time.perf_counter() - started
        if not r.rebuilt or r.step != repeats:
            raise RuntimeError(f"rebuild did not restore step {repeats}: {r}")
        restore_s = rebuild_s + restore_rank(lost, repeats, size, fill[lost.index])
        growth = lost.smp.memory()["VmHWM"] - before
        installed = size + size * m // k  # its blob and its m/k share of parity
        tcp_rebuild = grpc_rebuild = 0.0
        if baselines:
            # The same bytes, spread like the rebuild fetches them: k concurrent streams.
            share = [r.bytes_fetched // k] * k
            tcp_rebuild = statistics.median(tcp_transfer(share) for _ in range(repeats))
            grpc_rebuild = statistics.median(grpc_transfer(share) for _ in range(repeats))
        return Figures(
            setting,
            size,
            commit,
            sent,
            tcp_commit or float("nan"),
            grpc_commit or float("nan"),
            rebuild_s,
            restore_s,
            r.bytes_fetched,
            tcp_rebuild or float("nan"),
            grpc_rebuild or float("nan"),
            cpu_s,
            growth,
            installed,
            rates,
        )
    finally:
        for n in nodes:
            n.close()


def render(results: list[Figures]) -> str:
    head = (
        f"{'setting':>16} {'S':>6} | {'protect':>8} {'GB/s':>5} {'TCP':>5} {'gRPC':>5} "
        f"{'/TCP':>5} {'/gRPC':>5} {'sent/S':>6} | {'restore':>8} {'GB/s':>5} {'TCP':>5} "
        f"{'gRPC':>5} {'/TCP':>5} {'/gRPC':>5} | {'CPU-s/GiB':>9}"
    )
    lines = [head]
    memory = []
    for f in results:
        s = f.summary()
        lines.append(
            f"{f.setting.name:>16} {f.state_bytes / 2**20:>4.0f}Mi | "
            f"{s['commit_s']:>7.3f}s {s['commit_GBps']:>5.2f} {s['tcp_commit_GBps']:>5.2f} "
            f"{s['grpc_commit_GBps']:>5.2f} {s['commit_vs_tcp']:>5.2f} "
            f"{s['commit_vs_grpc']:>5.2f} {s['sent_per_node_over_S']:>6.2f} | "
            f"{s['restore_s']:>7.3f}s {s['restore_GBps']:>5.2f} {s['tcp_rebuild_GBps']:>5.2f} "
            f"{s['grpc_rebuild_GBps']:>5.2f} {s['restore_vs_tcp']:>5.2f} "
            f"{s['restore_vs_grpc']:>5.2f} | {s['smp_cpu_s_per_GiB']:>9.2f}"
        )
        memory.append(
            f"  {f.setting.name}: the rebuilding SMP's peak RSS grew by "
            f"{f.rebuild_rss_growth / 2**20:.0f} MiB while installing "
            f"{f.rebuild_installed / 2**20:.0f} MiB ({s['rebuild_rss_over_installed']:.2f}x)"
        )
    return "\n".join(
        [*lines, "rebuild memory (target: at most what it installs + a constant):", *memory]
    )


def render_scaling(results: list[Figures]) -> str:
    lines = [
        "scaling (groups of 4, 1 parity): per node and per snapshot, should not grow with N",
        f"{'nodes':>6} {'group':>6} {'sent/S':>7} {'SMP CPU-s':>10} {'CPU-s/GiB':>10} "
        f"{'protect':>8}",
    ]
    for f in results:
        s = f.summary()
        lines.append(
            f"{f.setting.nodes:>6} {f.setting.group:>4}/{f.setting.parity} "
            f"{s['sent_per_node_over_S']:>7.2f} {s['node_cpu_s_per_snapshot']:>10.3f} "
            f"{s['smp_cpu_s_per_GiB']:>10.2f} {s['commit_s']:>7.3f}s"
        )
    return "\n".join(lines)


def render_cap(f: Figures) -> str:
    cap = f.setting.bandwidth or 0.0
    worst = max(f.send_rate) / cap
    rates = ", ".join(f"{r / 1e6:.0f}" for r in f.send_rate)
    verdict = "holds" if worst <= 1.10 else "EXCEEDED"
    return (
        f"--parity-bandwidth {cap / 1e6:.0f} MB/s ({f.setting.name}, S = "
        f"{f.state_bytes / 2**20:.0f} MiB): each SMP's parity bytes / protect time = {rates} "
        f"MB/s; the highest is {worst:.2f}x the cap ({verdict}: target <= 1.10x)"
    )


LEGEND = (
    "protect: save handed over -> committed on all nodes (checksums, chunks streamed, parity "
    "folded in); GB/s: parity bytes of all nodes / time; TCP, gRPC: the same bytes over raw "
    "loopback sockets (full-size buffers) / plain gRPC streams into a no-op process, same "
    "concurrency; /TCP, /gRPC: ecsnap's throughput as a fraction of theirs; sent/S: parity "
    "traffic per node per snapshot (target m); restore: a fresh SMP rebuilds a lost node's data "
    "and parity, then its rank opens (verified) and copies out its snapshot (GB/s of bytes "
    "fetched); CPU-s/GiB: all SMPs' CPU time per GiB of state protected (one memcpy here is "
    "~0.07 s/GiB)"
)


def settings_for(nodes: list[int], group: int, parities: list[int], tls: bool) -> list[Setting]:
    out: list[Setting] = []
    for tls_on in [False, True] if tls else [False]:
        for n in nodes:
            g = min(group, n)
            out.extend(Setting(n, g, m, tls_on) for m in parities if 1 <= m < g)
    return out


def run_cluster(
    size: int,
    repeats: int,
    nodes: list[int],
    group: int,
    parities: list[int],
    json_path: str | None,
    tls: bool = False,
    scaling: bool = False,
    bandwidth: float | None = None,
) -> int:
    root = short_tmpdir("ecsnap-bc-")
    limit = f"{max(1, (size * 4) >> 20) + 64}M"
    settings = settings_for(nodes, group, parities, tls)
    print(
        f"SMPs on loopback, one job, S = {size / 2**20:.0f} MiB per node, {repeats} snapshots per "
        "setting (median); raw TCP and plain gRPC move the same bytes alongside",
        flush=True,
    )
    results = [run_setting(root, st, size, repeats, limit) for st in settings]
    print(render(results))
    print(LEGEND, flush=True)
    extra: list[Figures] = []
    if scaling:
        runs = [run_setting(root, Setting(n, min(4, n), 1), size, repeats, limit, False)
                for n in (2, 4, 8)]  # fmt: skip
        print(render_scaling(runs))
        extra += runs
    if bandwidth:
        capped = run_setting(
            root, Setting(4, 4, 1, bandwidth=bandwidth), size, repeats, limit, False
        )
        print(render_cap(capped))
        extra.append(capped)
    if json_path:
        Path(json_path).write_text(
            json.dumps([{**asdict(f), **f.summary()} for f in [*results, *extra]], indent=2)
        )
    return 0
