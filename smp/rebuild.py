"""Rebuilding a lost node: fetch k surviving cells of every stripe from the group, decode ours.

A replacement node's SMP starts empty. It asks every peer for the job's committed step and the node
manifests they hold, then for each stripe of its group fetches k surviving cells (data chunks of
other nodes, or parity cells) over streaming gRPC, checks each against its checksum (a bad cell is
an erasure: another survivor is used), and decodes its own cell: a chunk of its blob, or one of
its parity cells. The rebuilt blob is checked chunk by chunk against the digests the holders
recorded when the chunks first arrived. Fewer than k good cells in any stripe is a clear error
naming the step, the group and the missing nodes; nothing partial is ever installed.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

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


def _fetch_cells(
    clients: PeerClients,
    cluster: ClusterState,
    job_id: str,
    step: int,
    stripe: int,
    candidates: list[tuple[int, int]],
    cell_len: int,
    digests_of: dict[int, dict[int, snapshot_pb2.ChunkDigest]],
    executor: Executor,
    timeout: float,
) -> tuple[dict[int, np.ndarray], int]:
    """k good cells of `stripe` (index -> zero-padded cell), fetched concurrently; a cell that
    fails or does not match its checksum is an erasure, replaced by the next survivor's."""
    k = cluster.group.k
    waiting = list(candidates)
    running: dict[Future[tuple[int, bytearray]], tuple[int, int]] = {}
    cells: dict[int, np.ndarray] = {}
    fetched = 0
    while len(cells) < k and (waiting or running):
        while waiting and len(cells) + len(running) < k:
            index, owner = waiting.pop(0)
            client = clients.get(cluster.addresses[owner], cluster.secret)
            running[executor.submit(client.fetch_cell, job_id, step, stripe, timeout)] = (
                index,
                owner,
            )
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for fut in done:
            index, owner = running.pop(fut)
            try:
                checksum, data = fut.result()
            except Exception as exc:  # noqa: BLE001 - an erasure; try the next survivor
                logger.warning(
                    "job=%s step=%d: fetching stripe %d from node %d failed: %s",
                    job_id,
                    step,
                    stripe,
                    owner,
                    exc,
                )
                continue
            fetched += len(data)
            expected = digests_of[owner].get(stripe)
            good = xxhash.xxh3_64_intdigest(data) == (
                expected.checksum if index < k and expected is not None else checksum
            )
            if not good:
                logger.error(
                    "job=%s step=%d: node %d's cell of stripe %d is corrupt; treating it as lost",
                    job_id,
                    step,
                    owner,
                    stripe,
                )
                continue
            cell = np.frombuffer(data, dtype=np.uint8)
            if len(cell) < cell_len:  # a short last chunk: zero-padded like at encode time
                cell = np.concatenate([cell, np.zeros(cell_len - len(cell), dtype=np.uint8)])
            cells[index] = cell
    return cells, fetched


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
        candidates = [
            (i, group.cell_owner(stripe, i))
            for i in range(group.size)
            if group.cell_owner(stripe, i) in alive
        ]
        cells, got = _fetch_cells(
            clients,
            cluster,
            job_id,
            step,
            stripe,
            candidates,
            cell_len,
            digests_of,
            executor,
            timeout,
        )
        if len(cells) < group.k:
            raise RebuildFailed(
                f"cannot rebuild {where}: stripe {stripe} has {len(cells)} good "
                f"cells of the {group.k} needed"
            )
        mine_index = group.cell_index(stripe, me)
        if mine_index >= group.k:
            out = np.empty(cell_len, dtype=np.uint8)
            codec.decode(cells, [mine_index], [out])
            digests = {
                n: digests_of[n][stripe].checksum for n in contributors if stripe in digests_of[n]
            }
            parity[stripe] = (bytearray(out.data), digests)
            return got
        i = group.data_stripes(me).index(stripe)
        start, end = chunk_range(mine.blob_bytes, group.k, i)
        whole = end - start == cell_len  # decode straight into the blob unless padded
        out = blob_np[start:end] if whole else np.empty(cell_len, dtype=np.uint8)
        codec.decode(cells, [mine_index], [out])
        chunk = out[: end - start]
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
