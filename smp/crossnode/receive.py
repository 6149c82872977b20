"""Receiving side of parity: the cells a node holds for its group, filled as chunks stream in.

Each node holds m parity cells per step (one per stripe where it is a parity holder), double
buffered like the data slots: a new step never lands in the cell holding the committed step. Data
nodes forward their raw chunks; the holder folds each ~1 MiB piece straight into the cell with the
codec's fused multiply-XOR (ISA-L ec_encode_data_update), so nothing is buffered and the sender
computes nothing; the first share to reach a byte overwrites it, later ones XOR in
(`smp.crossnode.fold`), so a reused cell is never zero-filled. A cell is complete once every
contributor's chunk arrived whole and matched its checksum; its record (with the contributors'
digests and node manifests, what a replacement node needs to rebuild) is then written beside it,
so a restarted SMP re-adopts the cell.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from smp import checksum
from smp._proto import snapshot_pb2
from smp.codec import Codec
from smp.crossnode.fold import Watermark
from smp.errors import BadRequest, ChecksumMismatch, Conflict
from smp.layout import Group
from smp.store import AdoptedCell, Arena, Store

logger = logging.getLogger(__name__)

CELL_SLOTS = 2


@dataclass
class Cell:
    row: int
    slot: int
    arena: Arena | None = None
    step: int = -1
    stripe: int = -1
    length: int = 0
    done: dict[int, snapshot_pb2.ChunkDigest] = field(default_factory=dict)  # node -> digest
    # Nodes whose chunk started arriving: a second stream of the same chunk (a duplicate or a
    # retry after a half-folded one) would corrupt the cell, so it is refused.
    started: set[int] = field(default_factory=set)
    checksum: int | None = None  # of the complete cell
    epoch: int = 0  # the job incarnation whose chunks fill the cell
    written: Watermark = field(default_factory=Watermark)  # no zero-fill per step (fold.py)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def complete(self, group: Group) -> bool:
        return self.step >= 0 and set(self.done) == set(group.contributors(self.stripe))

    def reset(self, step: int = -1, stripe: int = -1, epoch: int = 0) -> None:
        self.step, self.stripe, self.done, self.checksum = step, stripe, {}, None
        self.started, self.length, self.epoch = set(), 0, epoch
        self.written.reset()


class ParityHolder:
    """The parity cells and received node manifests of one job on this node."""

    def __init__(self, store: Store, job_id: str, node: int, group: Group, engine: str) -> None:
        self.store = store
        self.job_id = job_id
        self.node = node
        self.group = group
        self.codec = Codec(group.k, group.parity, engine=engine)
        self._cells = {
            row: [Cell(row, s) for s in range(CELL_SLOTS)] for _, row in group.parity_cells(node)
        }
        self._lock = threading.Lock()
        self.manifests: dict[int, dict[int, snapshot_pb2.NodeManifest]] = {}
        self.epoch = 0  # bumped when the job restarts: chunks of its earlier incarnation are stale

    @property
    def nbytes(self) -> int:
        return sum(c.arena.capacity for cells in self._cells.values() for c in cells if c.arena)

    def row_of(self, stripe: int) -> int:
        holders = self.group.holders(stripe)
        if self.node not in holders:
            raise BadRequest(
                f"node {self.node} holds no parity of stripe {stripe} (holders: {list(holders)})"
            )
        return holders.index(self.node)

    # -- receiving ------------------------------------------------------------------------------

    def begin(
        self,
        step: int,
        stripe: int,
        from_node: int,
        length: int,
        manifest: snapshot_pb2.NodeManifest,
        committed: int | None,
    ) -> tuple[Cell, int]:
        """Pick (and if needed reset and grow) the cell that takes `from_node`'s chunk of `step`.

        Returns the cell and the epoch the chunk belongs to; pass both on to `accumulate`.
        """
        if not 0 <= stripe < self.group.size:
            raise BadRequest(f"stripe {stripe} is out of range 0..{self.group.size - 1}")
        if from_node not in self.group.contributors(stripe):
            raise BadRequest(f"node {from_node} contributes no data to stripe {stripe}")
        row = self.row_of(stripe)
        with self._lock:
            cells = self._cells[row]
            cell = next((c for c in cells if c.step == step), None)
            if cell is None:
                if committed is not None and step <= committed:
                    raise Conflict(f"step {step} is not newer than the committed step {committed}")
                keep = next((c for c in cells if c.step == committed), None)
                target = min((c for c in cells if c is not keep), key=lambda c: c.step)
                if target.step > step:
                    raise Conflict(f"step {step} was superseded by step {target.step}")
                with target.lock:
                    if target.arena is not None:  # its bytes are about to change
                        self.store.drop_record(target.arena)
                    target.reset(step, stripe, self.epoch)
                cell = target
            elif from_node in cell.started:
                raise Conflict(f"node {from_node} already sent its chunk of step {step} here")
            cell.started.add(from_node)
            epoch = self.epoch
            # A node may send several chunks here: keep the first copy (it collects digests).
            self.manifests.setdefault(step, {}).setdefault(from_node, manifest)
        with cell.lock:
            if cell.step != step or cell.epoch != epoch:
                raise Conflict(f"step {step} was superseded while its chunk arrived")
            context = f"parity of step {step} (job {self.job_id!r}, stripe {stripe})"
            if cell.arena is None:
                path = self.store.parity_path(self.job_id, row, cell.slot)
                cell.arena = self.store.allocate(path, length, None, context)
            elif length > cell.arena.capacity:
                self.store.grow(cell.arena, length, context)
            cell.length = max(cell.length, length)
        return cell, epoch

    def accumulate(
        self,
        cell: Cell,
        epoch: int,
        step: int,
        from_node: int,
        offset: int,
        piece: bytes | memoryview,
    ) -> None:
        """Fold bytes [offset, offset+len) of `from_node`'s chunk into the cell."""
        group = self.group
        data_index = group.contributors(cell.stripe).index(from_node)
        with cell.lock:
            if cell.step != step or cell.epoch != epoch or cell.arena is None:
                raise Conflict(f"step {step} was superseded while its chunk arrived")
            if offset + len(piece) > cell.length:
                raise BadRequest(
                    f"chunk of node {from_node} overruns its announced length {cell.length}"
                )
            view = cell.arena.view()
            parity = [group.k + self.row_of(cell.stripe)]
            for lo, hi, add in cell.written.spans(offset, len(piece)):
                share = piece[lo - offset : hi - offset]
                out = [view[lo:hi]]
                self.codec.partial_decode(range(group.k), parity, data_index, share, out, add)

    def finish(
        self, cell: Cell, epoch: int, step: int, from_node: int, digest: snapshot_pb2.ChunkDigest
    ) -> bool:
        """Record a whole, verified chunk; True when it completed the cell."""
        with cell.lock:
            if cell.step != step or cell.epoch != epoch:
                raise Conflict(f"step {step} was superseded while its chunk arrived")
            cell.done[from_node] = digest
            if not cell.complete(self.group) or cell.arena is None:
                return False
            tail = cell.arena.view(cell.length)[cell.written.filled :]
            np.frombuffer(tail, dtype=np.uint8).fill(0)  # no share reached it: it is zero
            cell.written.filled = cell.length
            cell.checksum = checksum.digest([cell.arena.view(cell.length)])
        with self._lock:
            step_manifests = self.manifests.get(step, {})
            manifest = step_manifests.get(from_node)
            if manifest is not None:
                manifest.chunks.append(digest)
            self._write_record(cell, list(step_manifests.values()))
        return True

    def _write_record(self, cell: Cell, manifests: list[snapshot_pb2.NodeManifest]) -> None:
        assert cell.arena is not None and cell.checksum is not None  # a complete cell
        contributors = []
        for node, d in sorted(cell.done.items()):
            contributors.append(
                snapshot_pb2.ChunkDigest(
                    stripe=cell.stripe, length=d.length, checksum=d.checksum, node=node
                )
            )
        self.store.write_record(
            cell.arena,
            snapshot_pb2.ParityRecord(
                job_id=self.job_id,
                row=cell.row,
                slot=cell.slot,
                step=cell.step,
                stripe=cell.stripe,
                length=cell.length,
                checksum=cell.checksum,
                contributors=contributors,
                manifests=manifests,
                arena_inode=cell.arena.inode,
            ),
        )

    # -- queries --------------------------------------------------------------------------------

    def complete(self, step: int) -> bool:
        """Every parity cell this node holds for `step` is complete."""
        for cells in self._cells.values():
            if not any(c.step == step and c.complete(self.group) for c in cells):
                return False
        return True

    def cell(self, step: int, stripe: int) -> Cell | None:
        row = self.row_of(stripe)
        return next((c for c in self._cells[row] if c.step == step and c.stripe == stripe), None)

    # -- a rebuilt node's cells -----------------------------------------------------------------

    def install_target(self, step: int, stripe: int, length: int) -> memoryview:
        """The bytes a rebuild decodes this node's cell of `stripe` into (stale until written)."""
        row = self.row_of(stripe)
        with self._lock:
            cell = min(self._cells[row], key=lambda c: c.step)
            path = self.store.parity_path(self.job_id, row, cell.slot)
            context = f"rebuilt parity of step {step} (job {self.job_id!r}, stripe {stripe})"
            cell.arena = self.store.allocate(path, length, cell.arena, context)
            with cell.lock:
                cell.reset(-1, stripe, self.epoch)  # not servable until finish_install
                cell.length = length
            return cell.arena.view(length)

    def finish_install(
        self,
        step: int,
        stripe: int,
        digests: dict[int, int],
        manifests: Iterable[snapshot_pb2.NodeManifest],
    ) -> None:
        """Put a rebuilt parity cell in place (replacement node), complete."""
        row = self.row_of(stripe)
        with self._lock:
            cell = next(c for c in self._cells[row] if c.stripe == stripe and c.step == -1)
            assert cell.arena is not None  # install_target allocated it
            cell.step = step
            cell.done = {
                n: snapshot_pb2.ChunkDigest(stripe=stripe, checksum=c) for n, c in digests.items()
            }
            cell.started = set(cell.done)
            cell.checksum = checksum.digest([cell.arena.view(cell.length)])
            for m in manifests:
                self.manifests.setdefault(step, {}).setdefault(m.node, m)
            self._write_record(cell, list(self.manifests.get(step, {}).values()))

    # -- lifecycle ------------------------------------------------------------------------------

    def adopt(self, found: Iterable[AdoptedCell]) -> list[int]:
        """Take over the cells an earlier daemon left (bytes verified against their records);
        returns the steps of the cells kept."""
        kept = []
        for item in found:
            cells = self._cells.get(item.row)
            if cells is None or item.slot >= CELL_SLOTS:
                self.store.free(item.arena)
                continue
            cell = cells[item.slot]
            cell.arena = item.arena
            rec = item.record
            if rec is None or rec.row != item.row or rec.slot != item.slot:
                continue
            if checksum.digest([item.arena.view(rec.length)]) != rec.checksum:
                logger.warning(
                    "job %s: parity cell of step %d, stripe %d does not match its record; "
                    "not re-adopted",
                    self.job_id,
                    rec.step,
                    rec.stripe,
                )
                self.store.drop_record(item.arena)
                continue
            cell.reset(rec.step, rec.stripe, self.epoch)
            cell.length, cell.checksum = rec.length, rec.checksum
            cell.done = {
                d.node: snapshot_pb2.ChunkDigest(
                    stripe=d.stripe, length=d.length, checksum=d.checksum
                )
                for d in rec.contributors
            }
            cell.started = set(cell.done)
            for m in rec.manifests:
                self.manifests.setdefault(rec.step, {}).setdefault(m.node, m)
            kept.append(rec.step)
        return kept

    def restart(self, committed: int | None) -> None:
        """The job restarted: parity of steps after `committed` is void (they will be saved again,
        maybe with other bytes), and chunks still streaming from the old incarnation are refused."""
        with self._lock:
            self.epoch += 1
            for cells in self._cells.values():
                for c in cells:
                    if committed is None or c.step > committed:
                        with c.lock:
                            if c.arena is not None:
                                self.store.drop_record(c.arena)
                            c.reset(epoch=self.epoch)
            for step in [s for s in self.manifests if committed is None or s > committed]:
                del self.manifests[step]

    def forget_before(self, step: int) -> None:
        """Drop node manifests of steps older than `step` (the committed one)."""
        with self._lock:
            for old in [s for s in self.manifests if s < step]:
                del self.manifests[old]

    def release(self) -> None:
        """Free every cell (the job was forgotten, or its layout changed)."""
        with self._lock:
            for cells in self._cells.values():
                for c in cells:
                    if c.arena is not None:
                        self.store.free(c.arena)
                        c.arena = None
                    c.reset()
            self.manifests.clear()


class ChunkSink:
    """One inbound chunk stream: its pieces folded into the cell as they come, its checksum
    verified at the end. The gRPC servicer only feeds it."""

    def __init__(
        self,
        holder: ParityHolder,
        cell: Cell,
        epoch: int,
        step: int,
        from_node: int,
        stripe: int,
        length: int,
    ) -> None:
        self.holder, self.cell, self.epoch = holder, cell, epoch
        self.step, self.from_node, self.stripe, self.length = step, from_node, stripe, length
        self._hasher = checksum.StreamDigest()
        self.received = 0

    def write(self, piece: bytes | memoryview) -> None:
        self.holder.accumulate(
            self.cell, self.epoch, self.step, self.from_node, self.received, piece
        )
        self._hasher.update(piece)
        self.received += len(piece)

    def finish(self, expected: int) -> tuple[snapshot_pb2.ChunkDigest, bool]:
        """The chunk's digest, and whether it completed the cell."""
        if self.received != self.length:
            raise BadRequest(
                f"chunk of node {self.from_node} ended after {self.received} of {self.length} bytes"
            )
        if self._hasher.value() != expected:
            raise ChecksumMismatch(
                f"chunk of node {self.from_node} for stripe {self.stripe} of step {self.step} "
                "arrived corrupted"
            )
        digest = snapshot_pb2.ChunkDigest(stripe=self.stripe, length=self.length, checksum=expected)
        return digest, self.holder.finish(self.cell, self.epoch, self.step, self.from_node, digest)
