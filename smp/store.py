"""Arena files on the store directory: allocation, pre-faulting, memory accounting, persistence.

An arena is one owner-only file per (job, rank, slot), sized on the first save, pre-faulted with
fallocate (so neither the trainer nor a later copy pays page-allocation costs, and a full tmpfs is
an error now rather than a SIGBUS later) and reused by every later save. Once a snapshot in a slot
is complete, a small record beside the arena lets a restarted SMP re-adopt it.

This module knows nothing of zmq or gRPC.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from smp._proto import snapshot_pb2
from smp.config import format_size
from smp.errors import BadRequest, ConfigError, MemoryLimitExceeded, StoreFull

logger = logging.getLogger(__name__)

# Arenas grow in these steps so a state that changes by a few bytes does not reallocate.
ARENA_GRANULE = 2 << 20
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ARENA_NAME = re.compile(r"^r(\d+)\.s(\d+)\.arena$")


def check_job_id(job_id: str) -> str:
    """Job ids name directories: refuse anything that could escape the store or confuse a shell."""
    if not _JOB_ID.match(job_id):
        raise BadRequest(
            f"job id {job_id!r} is not valid: use 1-128 characters of letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return job_id


def round_up(n: int, granule: int) -> int:
    return -(-n // granule) * granule


class Arena:
    """A shared, pre-faulted mapping of one arena file."""

    def __init__(self, path: Path, fd: int, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self._fd = fd
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


@dataclass
class AdoptedSlot:
    """An arena found on disk when the daemon started, with its record if it was complete."""

    job_id: str
    rank: int
    slot: int
    arena: Arena
    record: snapshot_pb2.SlotRecord | None


class Store:
    """Owns the store directory and every arena in it; enforces the memory limit."""

    def __init__(self, root: str, memory_limit: int | None) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._used = 0
        self.root.mkdir(parents=True, exist_ok=True)
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

    def arena_path(self, job_id: str, rank: int, slot: int) -> Path:
        return self.root / job_id / f"r{rank}.s{slot}.arena"

    def parity_path(self, job_id: str, row: int, slot: int) -> Path:
        return self.root / job_id / f"p{row}.s{slot}.arena"

    def _reserve(self, growth: int, context: str) -> None:
        with self._lock:
            if self._used + growth > self.memory_limit:
                raise MemoryLimitExceeded(
                    f"{context} needs {format_size(growth)} more arena but the store already "
                    f"holds {format_size(self._used)} of its {format_size(self.memory_limit)} "
                    "limit: raise --memory-limit, or remove old jobs' snapshots"
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

    def allocate(self, path: Path, nbytes: int, current: Arena | None, context: str) -> Arena:
        """Return an arena of at least `nbytes`, reusing `current` when it is large enough.

        On any failure the current arena and everything else stored stays as it was.
        """
        if current is not None and current.capacity >= nbytes:
            return current
        capacity = round_up(max(nbytes, 1), ARENA_GRANULE)
        growth = capacity - (current.capacity if current is not None else 0)
        self._reserve(growth, context)
        tmp = path.with_suffix(".arena.new")
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            arena = Arena.create(tmp, capacity)
            os.replace(tmp, path)
            arena.path = path
        except BaseException:
            self._release(growth)
            raise
        if current is not None:
            current.close()
        logger.info("allocated %s arena %s", format_size(capacity), path)
        return arena

    def record_path(self, arena: Arena) -> Path:
        return arena.path.with_suffix(".meta")

    def write_record(self, arena: Arena, record: snapshot_pb2.SlotRecord) -> None:
        """Persist a complete slot's record atomically (write, fsync-free rename: it is tmpfs)."""
        path = self.record_path(arena)
        tmp = path.with_suffix(".meta.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(record.SerializeToString())
        os.replace(tmp, path)

    def drop_record(self, arena: Arena) -> None:
        """Forget a slot's record *before* its bytes are overwritten."""
        self.record_path(arena).unlink(missing_ok=True)

    def adopt_all(self) -> list[AdoptedSlot]:
        """Re-adopt arenas left by an earlier daemon; drop half-written ones."""
        adopted: list[AdoptedSlot] = []
        for job_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            # Half-written arenas, and parity cells (not re-adopted: the next committed step
            # rebuilds them), are dropped.
            for leftover in [*job_dir.glob("*.new"), *job_dir.glob("p*.arena")]:
                leftover.unlink(missing_ok=True)
            for path in sorted(job_dir.glob("*.arena")):
                name = _ARENA_NAME.match(path.name)
                if not name or not _JOB_ID.match(job_dir.name):
                    continue
                arena = Arena.adopt(path)
                with self._lock:
                    self._used += arena.capacity
                rank, slot = int(name.group(1)), int(name.group(2))
                adopted.append(
                    AdoptedSlot(job_dir.name, rank, slot, arena, self._read_record(arena))
                )
        return adopted

    def _read_record(self, arena: Arena) -> snapshot_pb2.SlotRecord | None:
        path = self.record_path(arena)
        if not path.exists():
            return None
        record = snapshot_pb2.SlotRecord()
        try:
            record.ParseFromString(path.read_bytes())
        except Exception:  # noqa: BLE001 - a damaged record only costs that one snapshot
            logger.warning("ignoring unreadable slot record %s", path)
            return None
        if record.nbytes > arena.capacity:
            logger.warning(
                "ignoring slot record %s: claims %d bytes, arena has %d",
                path,
                record.nbytes,
                arena.capacity,
            )
            return None
        return record

    def close(self) -> None:
        """Nothing to flush: arenas are files; mappings close with their owners."""
