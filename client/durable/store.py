"""A persistence target: step directories, each a DCP checkpoint, visible only when complete.

    <target>/step-0000001200/       a DCP checkpoint (`.metadata`, `__<rank>_<n>.distcp`), each
                                    rank's manifest (`ecsnap-rank-<r>.*`, see `layout`), and
             ecsnap.json            the commit marker, written last: step, world size, every
                                    file's size and xxh3-128
    <target>/.partial/...           steps being written (directory targets)

A step is complete when its directory holds the marker. On a directory target a step is written
under `.partial/` and renamed into place (atomic on one filesystem), so a crash never leaves a
step directory behind that DCP or ecsnap would load; on an object store (any other fsspec URL)
it is written in place and the marker goes last, as DCP writes `.metadata` last. Retiring a step
deletes its marker first, so a half-deleted step is never complete either.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter

from ecsnap.durable.hashing import ALGORITHM, FileSum, digest_of, read_chunks
from ecsnap.errors import EcsnapError

MARKER = "ecsnap.json"
PARTIAL = ".partial"
FORMAT = 1
_STEP = re.compile(r"^step-(\d{10})$")


class PersistError(EcsnapError):
    """The durable tier could not write, list or read a step."""


def step_name(step: int) -> str:
    return f"step-{step:010d}"


class Store:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/") or target
        try:
            self.fs, self.root = url_to_fs(self.target)
        except (ImportError, ValueError) as exc:
            raise PersistError(
                f"persist_to={target!r} cannot be opened ({exc}): give a directory, or an "
                "fsspec URL whose filesystem is installed (s3:// needs s3fs, gs:// gcsfs)"
            ) from exc
        self.local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.target!r})"

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def checkpoint_id(self, path: str) -> str:
        """What DCP is given for a path of this store (the URL form off a local disk)."""
        if self.local:
            return path
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{path}"

    def step_path(self, step: int) -> str:
        return self._join(step_name(step))

    def writer(self, path: str) -> StorageWriter:
        """DCP's writer for a step's directory (`begin`'s path); every file fsynced."""
        if self.local:
            return FileSystemWriter(path, single_file_per_rank=True, sync_files=True)
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(self.checkpoint_id(path), single_file_per_rank=True)

    def reader(self, step: int) -> StorageReader:
        """DCP's reader of a complete step."""
        path = self.step_path(step)
        if self.local:
            return FileSystemReader(path)
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return FsspecReader(self.checkpoint_id(path))

    # -- listing --------------------------------------------------------------------------------

    def complete(self) -> list[int]:
        """Complete steps, newest first."""
        try:
            names = [os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False)]
            steps = [int(m.group(1)) for n in names if (m := _STEP.match(n))]
            done = [s for s in steps if self.fs.exists(self._join(step_name(s), MARKER))]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise PersistError(f"cannot list {self.target}: {exc}") from exc
        return sorted(done, reverse=True)

    def marker(self, step: int) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.read(step, MARKER))
        if found.get("format") != FORMAT or found.get("step") != step:
            raise PersistError(
                f"{self.target}/{step_name(step)}/{MARKER}: not an ecsnap marker of step {step} "
                f"(format {FORMAT})"
            )
        return found

    def read(self, step: int, name: str) -> bytes:
        """The whole file `name` of `step` (small files: markers, manifests)."""
        try:
            with self.fs.open(self._join(step_name(step), name), "rb") as f:
                data: bytes = f.read()
        except (OSError, ValueError) as exc:
            where = f"{self.target}/{step_name(step)}/{name}"
            raise PersistError(f"cannot read {where}: {exc}") from exc
        return data

    # -- writing --------------------------------------------------------------------------------

    def begin(self, step: int, nonce: str) -> str:
        """Where `step` is written: a fresh staging directory (directory targets) or the step's
        own place, cleared of an incomplete earlier attempt (object stores)."""
        try:
            if self.local:
                path = self._join(PARTIAL, f"{step_name(step)}-{nonce}")
                self.fs.makedirs(path, exist_ok=True)
                return path
            path = self.step_path(step)
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
            return path
        except OSError as exc:
            raise PersistError(f"cannot prepare {self.target} for step {step}: {exc}") from exc

    def publish(
        self, step: int, path: str, world: int, files: list[FileSum], seconds: float, job: str
    ) -> int:
        """Write the marker and make the step visible; returns the step's bytes."""
        total = sum(f.size for f in files)
        marker = {
            "format": FORMAT,
            "step": step,
            "job": job,
            "world_size": world,
            "bytes": total,
            "seconds": round(seconds, 3),
            "written_at": time.time(),
            "checksum": ALGORITHM,
            "files": {f.name: f.to_json() for f in files},
        }
        body = json.dumps(marker, indent=1, sort_keys=True).encode()
        try:
            if not self.local:
                with self.fs.open(self._join(step_name(step), MARKER), "wb") as f:
                    f.write(body)
                return total
            _write_synced(os.path.join(path, MARKER), body)
            final = self.step_path(step)
            if os.path.exists(final):  # an incomplete step of that number: superseded
                self._remove(step)
            os.rename(path, final)
            _sync_dir(self.root)
        except OSError as exc:
            raise PersistError(f"cannot publish step {step} in {self.target}: {exc}") from exc
        return total

    def abandon(self, path: str) -> None:
        """Drop a staging directory whose step failed (directory targets; on an object store the
        step's place is cleared by the next attempt)."""
        if self.local and self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _remove(self, step: int) -> None:
        path = self.step_path(step)
        marker = self._join(step_name(step), MARKER)
        if self.fs.exists(marker):
            self.fs.rm(marker)  # first: from here on the step is not complete
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def retire(self, steps: list[int]) -> None:
        for step in steps:
            try:
                self._remove(step)
            except OSError as exc:
                raise PersistError(f"cannot delete step {step} from {self.target}: {exc}") from exc

    def clean_partials(self) -> None:
        """Drop what crashed attempts left under .partial/ (nothing else of the job writes)."""
        if not self.local:
            return
        path = self._join(PARTIAL)
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except OSError as exc:
            raise PersistError(f"cannot clean {path}: {exc}") from exc

    # -- reading --------------------------------------------------------------------------------

    def verify(self, step: int, names: list[str], expected: dict[str, Any]) -> list[str]:
        """Check `names` of `step` against the marker's sums; what does not match, in words."""
        bad = []
        for name in names:
            want = expected[name]
            try:
                with self.fs.open(self._join(step_name(step), name), "rb") as f:
                    size, digest = digest_of(read_chunks(f))
            except OSError as exc:
                bad.append(f"{name}: {exc}")
                continue
            if size != want["size"] or digest != want[ALGORITHM]:
                bad.append(f"{name}: checksum mismatch ({size} bytes, {want['size']} expected)")
        return bad


def _write_synced(path: str, body: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
