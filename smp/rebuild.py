"""Rebuilding a lost node: stream k surviving cells of every stripe from the group, decode ours.

A replacement node's SMP starts empty. It asks every peer for the job's committed step and the node
manifests they hold, then, for all stripes of its group at once, streams k surviving cells (data
chunks of other nodes, or parity cells) over server-streaming gRPC and folds every ~1 MiB piece
into its own cell as it arrives (the codec's partial decode: each survivor's share is linear), so
no fetched cell is ever buffered. Each stream is checked against its checksum at its end; a cell
that fails or does not match is an erasure: the stripe is cleared and done again with another
survivor. The rebuilt chunks are checked against the digests the holders recorded when they first
arrived. Fewer than k good cells in any stripe is a clear error naming the step, the group and
the missing nodes; nothing partial is ever installed."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import xxhash

from smp._proto import peer_pb2, snapshot_pb2
from smp.cluster import ClusterState
from smp.codec import Codec
from smp.errors import RebuildFailed
from smp.layout import Group, chunk_range
from smp.peerclient import PeerClients

logger = logging.getLogger(__name__)


@dataclass
class RebuiltNode:
    step: int
    manifest: snapshot_pb2.NodeManifest
    blob: bytearray
    parity: dict[int, tuple[bytearray, dict[int, int]]]  # stripe -> (cell, contributor digests)
    bytes_fetched: int
    seconds: float


def _merge_manifests(
    states: dict[int, peer_pb2.JobStateResponse], step: int
) -> dict[int, snapshot_pb2.NodeManifest]:
    """Every node manifest of `step` known to the survivors, with all chunk digests merged."""
    merged: dict[int, snapshot_pb2.NodeManifest] = {}
    for state in states.values():
        for m in state.manifests:
            if m.step != step:
                continue
            have = merged.setdefault(
                m.node,
                snapshot_pb2.NodeManifest(
                    node=m.node, step=m.step, blob_bytes=m.blob_bytes, slots=m.slots
                ),
            )
            known = {d.stripe for d in have.chunks}
            have.chunks.extend(d for d in m.chunks if d.stripe not in known)
    return merged


def _data_length(
    group: Group, manifests: dict[int, snapshot_pb2.NodeManifest], node: int, stripe: int
) -> int:
    i = group.data_stripes(node).index(stripe)
    start, end = chunk_range(manifests[node].blob_bytes, group.k, i)
    return end - start


@dataclass
class _Stripe:
    """One stripe's rebuild: where the result goes and what is known of its cells."""

    stripe: int
    mine: int  # shard index of this node's cell
    out: np.ndarray  # zeroed, cell-length: the rebuilt cell is accumulated here
    candidates: list[tuple[int, int]]  # (shard index, owner) of surviving cells, in order
    expected: dict[int, int | None]  # shard index -> digest it must match (None: the header's)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _stream_one(
    clients: PeerClients,
    cluster: ClusterState,
    job_id: str,
    step: int,
    s: _Stripe,
    chosen: tuple[int, ...],
    index: int,
    owner: int,
    codec: Codec,
    timeout: float,
) -> int:
    """Fold survivor `index`'s cell into `s.out` as its pieces arrive; return its length.
    Raises when the stream fails, overruns the cell, or does not match its checksum."""
    client = clients.get(cluster.addresses[owner], cluster.secret)
    hasher = xxhash.xxh3_64()
    announced: int | None = None
    at = 0
    for msg in client.fetch_cell(job_id, step, s.stripe, timeout):
        if msg.HasField("header"):
            announced = msg.header.checksum
            continue
        piece = msg.data
        if at + len(piece) > len(s.out):
            raise ValueError(f"cell overruns the {len(s.out)} bytes expected")
        hasher.update(piece)
        with s.lock:
            codec.partial_decode(chosen, [s.mine], index, piece, [s.out[at : at + len(piece)]])
        at += len(piece)
    want = s.expected.get(index)
    if (want if want is not None else announced) != hasher.intdigest():
        raise ValueError("the cell does not match its checksum")
    return at


def _rebuild_stripe(
    clients: PeerClients,
    cluster: ClusterState,
    job_id: str,
    step: int,
    s: _Stripe,
    codec: Codec,
    executor: Executor,
    timeout: float,
) -> tuple[bool, int]:
    """Stream k surviving cells concurrently, each folded straight into the result (nothing is
    buffered); a cell that fails or does not match its checksum is an erasure: the result is
    cleared and the stripe is done again with the next survivor. Returns (rebuilt, bytes)."""
    k = cluster.group.k
    bad: set[int] = set()
    fetched = 0
    while True:
        usable = [(i, o) for i, o in s.candidates if i not in bad]
        if len(usable) < k:
            return False, fetched
        picked = usable[:k]
        chosen = tuple(sorted(i for i, _ in picked))
        futures = {
            executor.submit(
                _stream_one, clients, cluster, job_id, step, s, chosen, i, o, codec, timeout
            ): (i, o)
            for i, o in picked
        }
        failed = False
        for fut, (index, owner) in futures.items():
            try:
                fetched += fut.result()
            except Exception as exc:  # noqa: BLE001 - an erasure; try the next survivor
                logger.warning(
                    "job=%s step=%d: node %d's cell of stripe %d is lost to the rebuild: %s",
                    job_id,
                    step,
                    owner,
                    s.stripe,
                    exc,
                )
                bad.add(index)
                failed = True
        if not failed:
            return True, fetched
        s.out.fill(0)


def rebuild_node(
    clients: PeerClients,
    job_id: str,
    cluster: ClusterState,
    engine: str,
    executor: Executor,
    timeout: float,
) -> RebuiltNode | None:
    """Rebuild this node's newest committed step from its peers; None if no peer has one."""
    started = time.perf_counter()
    me, group = cluster.node, cluster.group
    states: dict[int, peer_pb2.JobStateResponse] = {}
    futures = {
        n: executor.submit(
            clients.get(cluster.addresses[n], cluster.secret).job_state, job_id, timeout
        )
        for n in cluster.peers()
    }
    for node, fut in futures.items():
        try:
            states[node] = fut.result()
        except Exception as exc:  # noqa: BLE001 - an unreachable peer counts as lost
            logger.warning("job=%s: node %d did not answer: %s", job_id, node, exc)
    committed = [s.committed_step for s in states.values() if s.has_committed]
    if not committed:
        return None
    step = max(committed)
    # A peer that has not yet seen the newest commit still holds that step's cells; one with
    # nothing committed (a replacement, like this one) holds none.
    alive = {n for n, s in states.items() if s.has_committed} & set(group.members)
    missing = sorted(set(group.members) - alive - {me})
    manifests = _merge_manifests(states, step)
    where = (
        f"step {step} of job {job_id!r}, group {group.index} (nodes "
        f"{list(group.members)}), missing nodes {sorted([*missing, me])}"
    )
    if me not in manifests or any(n not in manifests for n in group.members):
        raise RebuildFailed(
            f"cannot rebuild {where}: the survivors lack the node manifests "
            "needed (more nodes lost than the parity covers?)"
        )
    codec = Codec(group.k, group.parity, engine=engine)
    mine = manifests[me]
    blob = bytearray(mine.blob_bytes)
    parity: dict[int, tuple[bytearray, dict[int, int]]] = {}
    digests_of = {n: {d.stripe: d for d in manifests[n].chunks} for n in group.members}
    blob_np = np.frombuffer(blob, dtype=np.uint8)

    def one_stripe(stripe: int) -> int:
        contributors = group.contributors(stripe)
        cell_len = max(_data_length(group, manifests, n, stripe) for n in contributors)
        mine_index = group.cell_index(stripe, me)
        start = end = 0
        if mine_index < group.k:
            start, end = chunk_range(mine.blob_bytes, group.k, group.data_stripes(me).index(stripe))
        whole = mine_index < group.k and end - start == cell_len
        candidates = [(i, group.cell_owner(stripe, i)) for i in range(group.size)]
        candidates = [(i, owner) for i, owner in candidates if owner in alive]
        # A data cell must match the digest its holders recorded; a parity cell, its header.
        want: dict[int, int | None] = {}
        for i, owner in candidates:
            digest = digests_of[owner].get(stripe) if i < group.k else None
            want[i] = digest.checksum if digest is not None else None
        s = _Stripe(
            stripe,
            mine_index,
            blob_np[start:end] if whole else np.zeros(cell_len, dtype=np.uint8),
            candidates,
            want,
        )
        ok, got = _rebuild_stripe(clients, cluster, job_id, step, s, codec, executor, timeout)
        if not ok:
            raise RebuildFailed(
                f"cannot rebuild {where}: stripe {stripe} has fewer than the {group.k} good "
                "cells needed"
            )
        if mine_index >= group.k:
            digests = {
                n: digests_of[n][stripe].checksum for n in contributors if stripe in digests_of[n]
            }
            parity[stripe] = (bytearray(s.out.data), digests)
            return got
        chunk = s.out[: end - start]
        expected = digests_of[me].get(stripe)
        if expected is not None and xxhash.xxh3_64_intdigest(chunk.data) != expected.checksum:
            raise RebuildFailed(
                f"cannot rebuild {where}: the decoded chunk of stripe "
                f"{stripe} does not match its recorded checksum"
            )
        if not whole:
            blob_np[start:end] = chunk
        return got

    # Stripes in parallel (their fetches on `executor`): the transfers overlap with decoding.
    with ThreadPoolExecutor(group.size, thread_name_prefix="smp-stripe") as stripes:
        fetched = sum(stripes.map(one_stripe, range(group.size)))
    seconds = time.perf_counter() - started
    logger.info(
        "job=%s: rebuilt step %d of node %d from %d peers (%d bytes fetched) in %.2fs",
        job_id,
        step,
        me,
        len(alive),
        fetched,
        seconds,
    )
    return RebuiltNode(step, mine, blob, parity, fetched, seconds)
