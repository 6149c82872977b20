"""Per-chunk checksums of arena bytes (xxh3-64, ~15 GB/s on one core here).

A snapshot is cut into fixed-size chunks and each chunk gets its own checksum, so a damaged chunk
is located precisely (and, with parity, can be treated as an erasure rather than failing restore).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import xxhash

from smp._proto import snapshot_pb2
from smp.defaults import CHECKSUM_CHUNK

ALGORITHM = "xxh3_64"


@dataclass(frozen=True)
class Checksums:
    chunk_size: int
    values: tuple[int, ...]

    def to_proto(self) -> snapshot_pb2.Checksums:
        return snapshot_pb2.Checksums(
            algorithm=ALGORITHM, chunk_size=self.chunk_size, values=self.values
        )

    @classmethod
    def from_proto(cls, msg: snapshot_pb2.Checksums) -> Checksums:
        if msg.algorithm != ALGORITHM or msg.chunk_size <= 0:
            raise ValueError(f"unsupported checksums ({msg.algorithm!r}, chunk {msg.chunk_size})")
        return cls(msg.chunk_size, tuple(msg.values))


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    # xxhash releases the GIL: chunks hash in parallel on nodes with cores to spare.
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="smp-hash"
            )
        return _pool


def compute(data: memoryview, chunk_size: int = CHECKSUM_CHUNK) -> Checksums:
    """Checksum every `chunk_size` piece of `data` (the last one may be shorter)."""
    starts = range(0, len(data), chunk_size)

    def digest(start: int) -> int:
        return int(xxhash.xxh3_64_intdigest(data[start : start + chunk_size]))

    if len(starts) < 4:
        return Checksums(chunk_size, tuple(map(digest, starts)))
    return Checksums(chunk_size, tuple(_executor().map(digest, starts)))


class StreamDigest:
    """xxh3_64 of bytes that arrive in pieces (a chunk streamed over gRPC)."""

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_64()

    def update(self, piece: bytes | memoryview) -> None:
        self._hasher.update(piece)

    def value(self) -> int:
        return int(self._hasher.intdigest())


def digest(pieces: Iterable[bytes | memoryview]) -> int:
    """xxh3_64 of the concatenation of `pieces` (one digest, not per chunk)."""
    stream = StreamDigest()
    for piece in pieces:
        stream.update(piece)
    return stream.value()


def mismatches(data: memoryview, expected: Checksums) -> list[int]:
    """Indices of the chunks of `data` whose checksum differs from `expected`."""
    actual = compute(data, expected.chunk_size)
    if len(actual.values) != len(expected.values):
        return list(range(max(len(actual.values), len(expected.values))))
    return [
        i for i, (a, b) in enumerate(zip(actual.values, expected.values, strict=True)) if a != b
    ]
