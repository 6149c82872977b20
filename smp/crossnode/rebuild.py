"""Rebuilding a lost node from its group: plan, fetch and fold, verify.

plan    every peer is asked for the job's committed step and the node manifests it holds
        (`smp.crossnode.plan`: a peer that does not answer is named, never taken for "nothing
        committed").
fetch   for all stripes at once, k surviving cells of each are streamed (server-streaming gRPC)
        and every ~1 MiB piece is folded into this node's cell as it arrives (the codec's partial
        decode: each survivor's share is linear), straight into the arenas the rebuilt slots and
        parity cells will live in. Memory: the node's blob and its parity cells, plus the pieces
        in flight. A stream that fails or does not match its checksum is an erasure: the stripe
        is cleared and done again with the next survivor.
verify  every decoded chunk against the digest recorded when it was first sent; the local side
        then checks each rank's slot checksums before anything is served.
Fewer than k good cells in any stripe is a clear error naming the step, the group and the missing
nodes; nothing partial is ever installed.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from smp import checksum
from smp._proto import snapshot_pb2
from smp.codec import Codec
from smp.crossnode.fold import Watermark
from smp.crossnode.membership import Membership
from smp.crossnode.plan import Plan, cause, plan
from smp.crossnode.receive import ParityHolder
from smp.errors import RebuildFailed
from smp.layout import Group, chunk_range
from smp.local import LocalSnapshots
from smp.peerclient import PeerClients

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RebuildResult:
    """What a `Rebuild` request did: whether this node was rebuilt, and the step it holds."""

    rebuilt: bool
    step: int | None
    seconds: float = 0.0
    bytes_fetched: int = 0


# -- fetch and fold -----------------------------------------------------------------------------


class _Out:
    """Where one stripe's rebuilt cell goes: pieces of arenas, `length` bytes in all (the rest of
    the cell, beyond this node's chunk, is not needed and not computed). The first share to reach
    a byte overwrites it, so the arenas are never zero-filled first (`smp.crossnode.fold`)."""

    def __init__(self, regions: list[memoryview]) -> None:
        self.regions = regions
        self.length = sum(len(r) for r in regions)
        self.written = Watermark()

    def fold(
        self,
        codec: Codec,
        chosen: tuple[int, ...],
        mine: int,
        index: int,
        at: int,
        piece: memoryview,
    ) -> None:
        """Fold survivor `index`'s bytes [at, at + len(piece)) of the cell into the result."""
        n = min(len(piece), self.length - at)
        if n <= 0:
            return  # beyond this node's chunk: not needed
        for lo, hi, add in self.written.spans(at, n):
            for off, target in self.split(lo, hi - lo):
                share = piece[lo - at + off : lo - at + off + len(target)]
                codec.partial_decode(chosen, [mine], index, share, [target], add)

    def finish(self) -> None:
        """Zero what no share reached (the result is shorter than every survivor's cell)."""
        for _, target in self.split(self.written.filled, self.length - self.written.filled):
            np.frombuffer(target, dtype=np.uint8).fill(0)
        self.written.filled = self.length

    def split(self, at: int, n: int) -> list[tuple[int, memoryview]]:
        """(offset into a piece of n bytes at cell offset `at`, target view) pairs."""
        out, base = [], 0
        end = min(at + n, self.length)
        for region in self.regions:
            lo, hi = max(at, base), min(end, base + len(region))
            if lo < hi:
                out.append((lo - at, region[lo - base : hi - base]))
            base += len(region)
        return out

    def clear(self) -> None:
        """Start again (a survivor failed): what was folded so far is overwritten."""
        self.written.reset()

    def digest(self) -> int:
        return checksum.digest(self.regions)


@dataclass
class _Stripe:
    """One stripe's rebuild: where the result goes and what is known of its cells."""

    stripe: int
    mine: int  # shard index of this node's cell
    cell_len: int  # bytes of every cell of the stripe (the longest chunk)
    out: _Out
    candidates: list[tuple[int, int]]  # (shard index, owner) of surviving cells, in order
    expected: dict[int, int | None]  # shard index -> digest it must match (None: the header's)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Fetcher:
    def __init__(
        self,
        clients: PeerClients,
        job_id: str,
        cluster: Membership,
        step: int,
        codec: Codec,
        executor: Executor,
        timeout: float,
    ) -> None:
        self.clients, self.job_id, self.cluster = clients, job_id, cluster
        self.step, self.codec, self.executor, self.timeout = step, codec, executor, timeout

    def _stream_one(self, s: _Stripe, chosen: tuple[int, ...], index: int, owner: int) -> int:
        """Fold survivor `index`'s cell into `s.out` as its pieces arrive; return its length.
        Raises when the stream fails, overruns the cell, or does not match its checksum."""
        client = self.clients.get(self.cluster.addresses[owner], self.job_id, self.cluster.secret)
        hasher = checksum.StreamDigest()
        header, pieces = client.fetch_cell(self.job_id, self.step, s.stripe, self.timeout)
        announced = header.checksum
        at = 0
        for piece in pieces:
            if at + len(piece) > s.cell_len:
                raise ValueError(f"cell overruns the {s.cell_len} bytes expected")
            hasher.update(piece)
            with s.lock:
                s.out.fold(self.codec, chosen, s.mine, index, at, piece)
            at += len(piece)
        want = s.expected.get(index)
        if (want if want is not None else announced) != hasher.value():
            raise ValueError("the cell does not match its checksum")
        return at

    def stripe(self, s: _Stripe) -> tuple[bool, int]:
        """Stream k surviving cells concurrently, each folded straight into the result; a cell
        that fails or does not match its checksum is an erasure: the result is cleared and the
        stripe is done again with the next survivor. Returns (rebuilt, bytes fetched)."""
        k = self.cluster.group.k
        bad: set[int] = set()
        fetched = 0
        while True:
            usable = [(i, o) for i, o in s.candidates if i not in bad]
            if len(usable) < k:
                return False, fetched
            picked = usable[:k]
            chosen = tuple(sorted(i for i, _ in picked))
            futures = {
                self.executor.submit(self._stream_one, s, chosen, i, o): (i, o) for i, o in picked
            }
            failed = False
            for fut, (index, owner) in futures.items():
                try:
                    fetched += fut.result()
                except Exception as exc:  # noqa: BLE001 - an erasure; try the next survivor
                    logger.warning(
                        "job=%s step=%d: node %d's cell of stripe %d is lost to the rebuild: %s",
                        self.job_id,
                        self.step,
                        owner,
                        s.stripe,
                        cause(exc),
                    )
                    bad.add(index)
                    failed = True
            if not failed:
                s.out.finish()
                return True, fetched
            s.out.clear()


def _data_length(
    group: Group, manifests: dict[int, snapshot_pb2.NodeManifest], node: int, stripe: int
) -> int:
    i = group.data_stripes(node).index(stripe)
    start, end = chunk_range(manifests[node].blob_bytes, group.k, i)
    return end - start


def _blob_regions(slots: list[memoryview], start: int, end: int) -> list[memoryview]:
    """Views covering [start, end) of the concatenation of `slots` (the node's blob)."""
    out, base = [], 0
    for part in slots:
        lo, hi = max(start, base), min(end, base + len(part))
        if lo < hi:
            out.append(part[lo - base : hi - base])
        base += len(part)
    return out


def rebuild_node(
    clients: PeerClients,
    job_id: str,
    cluster: Membership,
    local: LocalSnapshots,
    engine: str,
    executor: Executor,
    timeout: float,
) -> RebuildResult | None:
    """Rebuild this node's newest committed step from its peers, installed in place; None if no
    peer has one (and every peer answered)."""
    started = time.perf_counter()
    found = plan(clients, job_id, cluster, executor, timeout)
    if found is None:
        return None
    me, step = cluster.node, found.step
    holder = cluster.holder
    assert holder is not None  # a protected job
    mine = found.manifests[me]
    records = list(mine.slots)
    slot_views = local.install_targets(job_id, step, records)
    ok = False
    try:
        codec = Codec(cluster.group.k, cluster.group.parity, engine=engine)
        fetcher = _Fetcher(clients, job_id, cluster, step, codec, executor, timeout)
        fetched = _NodeFetch(fetcher, cluster, found, slot_views, holder).run()
        ok = True
    finally:
        local.finish_install(job_id, step, records, ok)
    seconds = time.perf_counter() - started
    logger.info(
        "job=%s: rebuilt step %d of node %d from %d peers (%d bytes fetched) in %.2fs",
        job_id,
        step,
        me,
        len(found.alive),
        fetched,
        seconds,
    )
    return RebuildResult(True, step, seconds, fetched)


@dataclass
class _NodeFetch:
    """Every stripe of this node's cells, fetched and folded into the arenas they will live in."""

    fetcher: _Fetcher
    cluster: Membership
    found: Plan
    slot_views: list[memoryview]
    holder: ParityHolder

    def run(self) -> int:
        group = self.cluster.group
        # Stripes in parallel (their fetches on the fetcher's executor): transfers overlap decoding.
        with ThreadPoolExecutor(group.size, thread_name_prefix="smp-stripe") as stripes:
            return sum(stripes.map(self.stripe, range(group.size)))

    def stripe(self, stripe: int) -> int:
        group, me, found = self.cluster.group, self.cluster.node, self.found
        contributors = group.contributors(stripe)
        cell_len = max(_data_length(group, found.manifests, n, stripe) for n in contributors)
        mine_index = group.cell_index(stripe, me)
        out = self._target(stripe, mine_index, cell_len)
        s = _Stripe(stripe, mine_index, cell_len, out, *self._candidates(stripe))
        ok, got = self.fetcher.stripe(s)
        if not ok:
            raise RebuildFailed(
                f"cannot rebuild {found.where}: stripe {stripe} has fewer than the {group.k} good "
                "cells needed"
            )
        if mine_index >= group.k:
            self._install_parity(stripe)
        else:
            self._verify(stripe, out)
        return got

    def _target(self, stripe: int, mine_index: int, cell_len: int) -> _Out:
        """Where this node's cell of `stripe` is decoded: its slice of the slots, or parity."""
        group, me, step = self.cluster.group, self.cluster.node, self.found.step
        if mine_index >= group.k:
            return _Out([self.holder.install_target(step, stripe, cell_len)])
        blob_bytes = self.found.manifests[me].blob_bytes
        start, end = chunk_range(blob_bytes, group.k, group.data_stripes(me).index(stripe))
        return _Out(_blob_regions(self.slot_views, start, end))

    def _candidates(self, stripe: int) -> tuple[list[tuple[int, int]], dict[int, int | None]]:
        """The surviving cells of `stripe` (index, owner), and what each must hash to: a data
        cell the digest its holders recorded; a parity cell, its header's (None here)."""
        group, found = self.cluster.group, self.found
        candidates = [(i, group.cell_owner(stripe, i)) for i in range(group.size)]
        candidates = [(i, owner) for i, owner in candidates if owner in found.alive]
        expected: dict[int, int | None] = {}
        for i, owner in candidates:
            digest = found.digests(owner).get(stripe) if i < group.k else None
            expected[i] = digest.checksum if digest is not None else None
        return candidates, expected

    def _install_parity(self, stripe: int) -> None:
        found = self.found
        digests = {
            n: found.digests(n)[stripe].checksum
            for n in self.cluster.group.contributors(stripe)
            if stripe in found.digests(n)
        }
        self.holder.finish_install(found.step, stripe, digests, found.manifests.values())

    def _verify(self, stripe: int, out: _Out) -> None:
        want = self.found.digests(self.cluster.node).get(stripe)
        if want is not None and out.digest() != want.checksum:
            raise RebuildFailed(
                f"cannot rebuild {self.found.where}: the decoded chunk of stripe {stripe} does not "
                "match its recorded checksum"
            )
