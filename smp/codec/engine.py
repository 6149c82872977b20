"""What an engine is, and the chunked, multi-threaded driver both engines run their byte ranges on.

An engine applies a small GF(2^8) matrix to equal-length byte vectors: outputs[j] (=|^=)
XOR_i matrix[j, i] * inputs[i]. Encoding, partial parity and rebuilding are all that one operation
with different matrices. Arguments arrive validated (see buffers.py): engines trust them.

Long ranges are cut into chunks that the calling thread and a few pool threads pull in turn. The
native ISA-L calls and numpy's take/xor release the GIL, so on a 2-core machine two threads nearly
double throughput (measured by `python -m smp.codec.bench`). Chunks also bound each native call's
length (ISA-L takes an int length) and keep each worker's working set in cache.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from smp.codec.buffers import Bytes
from smp.codec.gf256 import Matrix

MAX_DEFAULT_THREADS = 4  # beyond this, memory bandwidth, not compute, bounds the codec


class Engine(Protocol):
    """A way to compute outputs from inputs with a GF(2^8) matrix (see module docstring)."""

    name: str
    threads: int

    def apply(
        self,
        matrix: Matrix,
        inputs: Sequence[Bytes],
        outputs: Sequence[Bytes],
        accumulate: bool,
    ) -> None:
        """outputs[j] = (outputs[j] if accumulate else 0) ^ XOR_i matrix[j, i] * inputs[i].

        matrix is (len(outputs), len(inputs)); all arrays are 1-D uint8 of one length, outputs are
        writable and overlap nothing else.
        """
        ...


def default_threads() -> int:
    """Threads a codec uses when not told: the usable cores, at most MAX_DEFAULT_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_THREADS))


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forget_pools_after_fork() -> None:
    # A forked child inherits the pools but not their threads; give it fresh ones on demand.
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _pool(helpers: int) -> ThreadPoolExecutor:
    # One shared pool per helper count for the whole process: codecs are cheap to create and the
    # daemon may hold many, but threads are not.
    with _pools_lock:
        pool = _pools.get(helpers)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="ecsnap-codec")
            _pools[helpers] = pool
        return pool


def run_chunks(length: int, chunk: int, threads: int, work: Callable[[int, int], None]) -> None:
    """Call work(start, stop) over [0, length) in pieces of at most `chunk` bytes.

    `chunk` must be even (so that only the very last piece can have an odd length). With
    threads > 1 and more than one chunk, up to threads-1 pool threads help the caller; each chunk
    runs exactly once, and the first exception raised by any piece is re-raised here.
    """
    if length <= 0:
        return
    starts = range(0, length, chunk)
    if threads <= 1 or len(starts) == 1:
        for start in starts:
            work(start, min(start + chunk, length))
        return

    counter = itertools.count()
    lock = threading.Lock()
    failed = threading.Event()

    def drain() -> None:
        while not failed.is_set():
            with lock:
                n = next(counter)
            if n >= len(starts):
                return
            start = starts[n]
            try:
                work(start, min(start + chunk, length))
            except BaseException:
                failed.set()  # the others stop taking chunks; the error surfaces below
                raise

    helpers = min(threads, len(starts)) - 1
    futures: list[Future[None]] = [_pool(threads - 1).submit(drain) for _ in range(helpers)]
    try:
        drain()
    finally:
        for future in futures:
            # A helper still queued behind other calls is not needed any more: the caller has
            # drained every chunk. Those already running finish their current chunk.
            if not future.cancel():
                future.result()
