"""Checksums of what DCP writes, taken as it writes them, and the write bandwidth cap.

DCP's storage writers open every file through their `fs.create_stream`; `watch` replaces that
filesystem with one whose write streams hash (xxh3-128) and pace every byte on its way to the
file, so a persisted step's files are checksummed without being read back. `verify` reads a
file and compares.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Generator, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import xxhash

from smp.pacing import Pacer

ALGORITHM = "xxh3_128"
_READ = 4 << 20


@dataclass(frozen=True)
class FileSum:
    name: str  # relative to the step directory
    size: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, ALGORITHM: self.digest}


class _HashingStream(io.RawIOBase):
    """A write stream that hashes and paces what passes through it to `raw`."""

    def __init__(self, raw: IO[bytes], pacer: Pacer) -> None:
        super().__init__()
        self._raw = raw
        self._pacer = pacer
        self._hash = xxhash.xxh3_128()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self._pacer.take(view.nbytes)
        self._hash.update(view)
        self._raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    def fileno(self) -> int:
        return self._raw.fileno()

    @property
    def digest(self) -> str:
        return str(self._hash.hexdigest())


class HashingFileSystem:
    """Delegates to a DCP storage writer's filesystem; its write streams hash and pace."""

    def __init__(self, inner: Any, pacer: Pacer) -> None:
        self._inner = inner
        self._pacer = pacer
        self._lock = threading.Lock()
        self.sums: dict[str, tuple[int, str]] = {}  # path as opened -> (size, digest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Generator[Any, None, None]:
        with self._inner.create_stream(path, mode) as raw:
            if "w" not in mode:
                yield raw
                return
            stream = _HashingStream(raw, self._pacer)
            yield stream
            with self._lock:
                self.sums[os.fspath(path)] = (stream.size, stream.digest)

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        self._inner.rename(path, new_path)
        with self._lock:
            found = self.sums.pop(os.fspath(path), None)
            if found is not None:
                self.sums[os.fspath(new_path)] = found

    def written(self) -> list[FileSum]:
        """Every file written, by its name in the step directory."""
        with self._lock:
            return [FileSum(os.path.basename(p), s, d) for p, (s, d) in sorted(self.sums.items())]


def watch(writer: Any, pacer: Pacer) -> HashingFileSystem:
    """Make `writer` (a DCP FileSystemWriter or FsspecWriter) hash and pace its writes."""
    fs = HashingFileSystem(writer.fs, pacer)
    writer.fs = fs
    return fs


def digest_of(chunks: Iterable[bytes]) -> tuple[int, str]:
    h = xxhash.xxh3_128()
    size = 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
    return size, str(h.hexdigest())


def read_chunks(stream: IO[bytes]) -> Iterable[bytes]:
    while chunk := stream.read(_READ):
        yield chunk
