"""Arena files on the store directory: allocation, pre-faulting, memory accounting, records.

An arena is one owner-only file (a rank's slot or a parity cell), sized on first use, pre-faulted
with fallocate (so neither the trainer nor a later copy pays page-allocation costs, and a full
tmpfs is an error now rather than a SIGBUS later) and reused by every later save. Once what an
arena holds is complete, a small record beside it lets a restarted SMP re-adopt it. Every record
file carries its own checksum and names the arena file (inode) it describes, so a damaged,
edited or stale record is ignored, never trusted.

This module knows nothing of zmq or gRPC.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import xxhash
from google.protobuf.message import DecodeError, Message

from smp._proto import snapshot_pb2
from smp.config import format_size
from smp.defaults import JOB_ID
from smp.errors import ConfigError, MemoryLimitExceeded, StoreFull
from smp.sockdir import STORE, ensure_private_dir

logger = logging.getLogger(__name__)

# Arenas grow in these steps so a state that changes by a few bytes does not reallocate.
ARENA_GRANULE = 2 << 20
_SLOT_NAME = re.compile(r"^r(\d+)\.s(\d+)\.arena$")
_PARITY_NAME = re.compile(r"^p(\d+)\.s(\d+)\.arena$")
CLUSTER_FILE = "cluster.meta"
KEY_FILE = "key.meta"
FINISHED_FILE = "finished.meta"
PORT_FILE = "smp.port"
R = TypeVar("R", bound=Message)


def round_up(n: int, granule: int) -> int:
    return -(-n // granule) * granule


class Arena:
    """A shared, pre-faulted mapping of one arena file."""

    def __init__(self, path: Path, fd: int, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self._fd = fd
        self.inode = os.fstat(fd).st_ino
        self._map = mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @classmethod
    def create(cls, path: Path, capacity: int) -> Arena:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, capacity)
            # Allocates (and zeroes) every page now: on tmpfs this is what turns a later SIGBUS
            # into an ENOSPC we can explain, and it keeps first-touch costs off the copy path.
            os.posix_fallocate(fd, 0, capacity)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                raise StoreFull(
                    f"the store filesystem has no room for a {format_size(capacity)} arena at "
                    f"{path.parent}: give it more space (e.g. `docker run --shm-size=...`, or a "
                    "larger tmpfs) or lower the state size"
                ) from exc
            raise
        return cls(path, fd, capacity)

    @classmethod
    def adopt(cls, path: Path) -> Arena:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        return cls(path, fd, os.fstat(fd).st_size)

    def grow(self, capacity: int) -> None:
        """Enlarge the file keeping its bytes (new bytes are zero) and remap it."""
        if capacity <= self.capacity:
            return
        try:
            os.ftruncate(self._fd, capacity)
            os.posix_fallocate(self._fd, self.capacity, capacity - self.capacity)
        except OSError as exc:
            os.ftruncate(self._fd, self.capacity)
            raise StoreFull(
                f"the store filesystem has no room to grow {self.path.name} to "
                f"{format_size(capacity)}: give it more space"
            ) from exc
        self._map.close()
        self._map = mmap.mmap(self._fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.capacity = capacity

    def view(self, nbytes: int | None = None) -> memoryview:
        mv = memoryview(self._map)
        return mv if nbytes is None else mv[:nbytes]

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            # A view is still exported (a checksum task holds one); the mapping closes with it.
            logger.debug("arena %s still has exported views; leaving mapping to the GC", self.path)
        os.close(self._fd)

    def record_path(self) -> Path:
        return self.path.with_suffix(".meta")


@dataclass
class AdoptedSlot:
    """A rank's slot arena found on disk when the daemon started, with its record if valid."""

    job_id: str
    rank: int
    slot: int
    arena: Arena
    record: snapshot_pb2.SlotRecord | None


@dataclass
class AdoptedCell:
    """A parity cell arena found on disk, with its record if valid."""

    job_id: str
    row: int
    slot: int
    arena: Arena
    record: snapshot_pb2.ParityRecord | None


@dataclass
class Adopted:
    """What an earlier daemon left in the store."""

    slots: list[AdoptedSlot] = field(default_factory=list)
    cells: list[AdoptedCell] = field(default_factory=list)
    clusters: dict[str, snapshot_pb2.ClusterRecord] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict)  # job -> the key digest it is bound to
    finished: dict[str, int] = field(default_factory=dict)  # job -> the step it ended at


class Store:
    """Owns the store directory and every arena in it; enforces the memory limit."""

    def __init__(self, root: str, memory_limit: int | None) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._used = 0
        # Trainers map their snapshots from here: nobody else may be able to write it.
        ensure_private_dir(self.root, what=STORE)
        os.chmod(self.root, 0o700)
        free = self.free_bytes()
        if memory_limit is None:
            memory_limit = free
            logger.info(
                "no --memory-limit given: using the store's free space, %s", format_size(free)
            )
        elif memory_limit > free + self._arena_bytes_on_disk():
            raise ConfigError(
                f"--memory-limit {format_size(memory_limit)} exceeds the free space of the store "
                f"filesystem at {self.root} ({format_size(free)}). Snapshots would fail there "
                "(on tmpfs: SIGBUS). Enlarge it (Docker: --shm-size; Kubernetes: an emptyDir with "
                "medium: Memory and a sizeLimit) or lower --memory-limit."
            )
        self.memory_limit = memory_limit

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def _arena_bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.arena"))

    @property
    def used(self) -> int:
        return self._used

    # -- paths ------------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def arena_path(self, job_id: str, rank: int, slot: int) -> Path:
        return self.root / job_id / f"r{rank}.s{slot}.arena"

    def parity_path(self, job_id: str, row: int, slot: int) -> Path:
        return self.root / job_id / f"p{row}.s{slot}.arena"

    def cluster_path(self, job_id: str) -> Path:
        return self.root / job_id / CLUSTER_FILE

    def remembered_port(self) -> int | None:
        """The peer port an earlier SMP on this store had (see Daemon._bind_peer)."""
        try:
            return int((self.root / PORT_FILE).read_text())
        except (OSError, ValueError):
            return None

    def remember_port(self, port: int) -> None:
        (self.root / PORT_FILE).write_text(str(port))

    # -- memory -----------------------------------------------------------------------------------

    def _reserve(self, growth: int, context: str) -> None:
        with self._lock:
            if self._used + growth > self.memory_limit:
                raise MemoryLimitExceeded(
                    f"{context} needs {format_size(growth)} more arena but the store already "
                    f"holds {format_size(self._used)} of its {format_size(self.memory_limit)} "
                    "limit: raise --memory-limit, or remove old jobs' snapshots (`smp forget JOB`)"
                )
            free = self.free_bytes()
            if growth > free:
                raise StoreFull(
                    f"{context} needs {format_size(growth)} more but the store filesystem at "
                    f"{self.root} has only {format_size(free)} free: enlarge it (Docker: "
                    "--shm-size) or lower --memory-limit"
                )
            self._used += growth

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes

    def grow(self, arena: Arena, nbytes: int, context: str) -> None:
        """Grow `arena` in place to hold `nbytes`, keeping its content (parity cells)."""
        capacity = round_up(nbytes, ARENA_GRANULE)
        if capacity <= arena.capacity:
            return
        growth = capacity - arena.capacity
        self._reserve(growth, context)
        try:
            arena.grow(capacity)
        except BaseException:
            self._release(growth)
            raise

    def allocate(
        self, path: Path, nbytes: int, current: Arena | None, context: str, fresh: bool = False
    ) -> Arena:
        """Return an arena of at least `nbytes`, reusing `current` when it is large enough (and
        `fresh` is not asked: a new file, e.g. because a stale writer may still map the old).

        The old file's record is removed first. On any failure the current arena and everything
        else stored stays as it was."""
        if current is not None and current.capacity >= nbytes and not fresh:
            return current
        capacity = round_up(max(nbytes, 1), ARENA_GRANULE)
        growth = capacity - (current.capacity if current is not None else 0)
        self._reserve(max(growth, 0), context)
        path.with_suffix(".meta").unlink(missing_ok=True)  # it described the file replaced here
        tmp = path.with_suffix(".arena.new")
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            arena = Arena.create(tmp, capacity)
            os.replace(tmp, path)
            arena.path = path
        except BaseException:
            self._release(max(growth, 0))
            raise
        if current is not None:
            if growth < 0:
                self._release(-growth)
            current.close()
        logger.info("allocated %s arena %s", format_size(capacity), path)
        return arena

    def free(self, arena: Arena) -> None:
        """Delete an arena file and its record; its memory goes back to the limit."""
        self.drop_record(arena)
        arena.path.unlink(missing_ok=True)
        arena.close()
        self._release(arena.capacity)

    def forget_job(self, job_id: str) -> None:
        """Remove what is left of a job's directory (call after freeing its arenas)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # -- records ----------------------------------------------------------------------------------

    @staticmethod
    def _write(path: Path, record: Message) -> None:
        """Atomically (write, rename; it is tmpfs: no fsync) with the record's checksum."""
        body = record.SerializeToString()
        blob = snapshot_pb2.RecordFile(record=body, checksum=xxhash.xxh3_64_intdigest(body))
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob.SerializeToString())
        os.replace(tmp, path)

    @staticmethod
    def _read(path: Path, cls: type[R]) -> R | None:
        try:
            blob = snapshot_pb2.RecordFile()
            blob.ParseFromString(path.read_bytes())
            if xxhash.xxh3_64_intdigest(blob.record) != blob.checksum:
                raise ValueError("checksum mismatch")
            record = cls()
            record.ParseFromString(blob.record)
        except FileNotFoundError:
            return None
        except (OSError, DecodeError, ValueError) as exc:
            logger.warning("ignoring damaged record %s (%s)", path, exc)
            return None
        return record

    def write_record(self, arena: Arena, record: Message) -> None:
        self._write(arena.record_path(), record)

    def drop_record(self, arena: Arena) -> None:
        """Forget an arena's record *before* its bytes are overwritten."""
        arena.record_path().unlink(missing_ok=True)

    def write_job_key(self, job_id: str, digest: bytes) -> None:
        self.job_dir(job_id).mkdir(mode=0o700, exist_ok=True)
        self._write(
            self.job_dir(job_id) / KEY_FILE, snapshot_pb2.JobKeyRecord(job_id=job_id, digest=digest)
        )

    def write_finished(self, job_id: str, step: int | None) -> None:
        """Record (or, with None, drop) the step the job ended at."""
        path = self.job_dir(job_id) / FINISHED_FILE
        if step is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(mode=0o700, exist_ok=True)
        self._write(path, snapshot_pb2.FinishedRecord(job_id=job_id, step=step))

    def write_cluster(self, record: snapshot_pb2.ClusterRecord) -> None:
        path = self.cluster_path(record.job_id)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        self._write(path, record)

    # -- adoption ---------------------------------------------------------------------------------

    def adopt_all(self) -> Adopted:
        """Re-adopt arenas and records left by an earlier daemon; drop half-written files."""
        found = Adopted()
        for job_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not JOB_ID.match(job_dir.name):
                continue
            job = job_dir.name
            for leftover in [*job_dir.glob("*.new"), *job_dir.glob("*.tmp")]:
                leftover.unlink(missing_ok=True)
            key = self._read(job_dir / KEY_FILE, snapshot_pb2.JobKeyRecord)
            if key is not None and key.job_id == job:
                found.keys[job] = key.digest
            done = self._read(job_dir / FINISHED_FILE, snapshot_pb2.FinishedRecord)
            if done is not None and done.job_id == job:
                found.finished[job] = done.step
            cluster = self._read(job_dir / CLUSTER_FILE, snapshot_pb2.ClusterRecord)
            if cluster is not None and cluster.job_id == job:
                found.clusters[job] = cluster
            for path in sorted(job_dir.glob("*.arena")):
                arena = Arena.adopt(path)
                with self._lock:
                    self._used += arena.capacity
                if slot := _SLOT_NAME.match(path.name):
                    rec = self._valid(
                        arena, self._read(arena.record_path(), snapshot_pb2.SlotRecord)
                    )
                    found.slots.append(
                        AdoptedSlot(job, int(slot.group(1)), int(slot.group(2)), arena, rec)
                    )
                elif cell := _PARITY_NAME.match(path.name):
                    prec = self._read(arena.record_path(), snapshot_pb2.ParityRecord)
                    found.cells.append(
                        AdoptedCell(
                            job,
                            int(cell.group(1)),
                            int(cell.group(2)),
                            arena,
                            self._valid(arena, prec),
                        )
                    )
                else:
                    self.free(arena)  # nothing of ours
        return found

    @staticmethod
    def _valid(arena: Arena, record: R | None) -> R | None:
        """The record if it describes exactly this arena file."""
        if record is None:
            return None
        inode = int(getattr(record, "arena_inode", 0))
        nbytes = int(getattr(record, "nbytes", 0) or getattr(record, "length", 0))
        if inode != arena.inode or nbytes > arena.capacity:
            logger.warning(
                "ignoring record %s: it describes another file or more bytes than it holds",
                arena.record_path(),
            )
            return None
        return record

    def close(self) -> None:
        """Nothing to flush: arenas are files; mappings close with their owners."""
