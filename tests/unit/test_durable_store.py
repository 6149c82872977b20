"""Persistence targets: a step is visible only once complete, retired marker first, and every
file's checksum is kept and checked; on a directory and on an object store (fsspec memory://)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytest.importorskip("torch")

from ecsnap.durable.hashing import digest_of, watch
from ecsnap.durable.store import MARKER, PersistError, Store
from smp.pacing import Pacer


def write_step(store: Store, step: int, body: bytes = b"payload") -> None:
    path = store.begin(step, "n1")
    fs = watch(store.writer(path), Pacer(None))
    with fs.create_stream(fs.concat_path(path, "data.bin"), "wb") as f:
        f.write(body)
    store.publish(step, path, 1, fs.written(), 0.1, "job")


@pytest.fixture(params=["dir", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "dir":
        return Store(str(tmp_path / "persist"))
    return Store(f"memory://ecsnap-{uuid.uuid4().hex}/persist")


def test_a_step_is_complete_only_once_published(store: Store) -> None:
    assert store.complete() == []
    path = store.begin(5, "n1")
    fs = watch(store.writer(path), Pacer(None))
    with fs.create_stream(fs.concat_path(path, "data.bin"), "wb") as f:
        f.write(b"x" * 1000)
    assert store.complete() == []  # written, not published: never loaded
    store.publish(5, path, 1, fs.written(), 0.1, "job")
    assert store.complete() == [5]
    marker = store.marker(5)
    assert marker["world_size"] == 1 and marker["files"]["data.bin"]["size"] == 1000
    assert store.verify(5, ["data.bin"], marker["files"]) == []


def test_checksums_find_a_changed_byte(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    write_step(store, 1, b"abcdef" * 100)
    data = tmp_path / "step-0000000001" / "data.bin"
    raw = bytearray(data.read_bytes())
    raw[7] ^= 1
    data.write_bytes(bytes(raw))
    bad = store.verify(1, ["data.bin"], store.marker(1)["files"])
    assert bad and "checksum mismatch" in bad[0]


def test_retiring_keeps_the_rest_and_partials_are_cleaned(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    for step in (1, 2, 3):
        write_step(store, step)
    store.begin(4, "crashed")  # an attempt that never finished
    store.retire([1, 2])
    assert store.complete() == [3]
    assert (tmp_path / ".partial").exists()
    store.clean_partials()
    assert not (tmp_path / ".partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000000003"]


def test_a_half_deleted_step_is_not_complete(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    write_step(store, 8)
    (tmp_path / "step-0000000008" / MARKER).unlink()  # retire's first move, then a crash
    assert store.complete() == []


def test_hashing_stream_sums_what_lands_in_the_file(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    path = store.begin(2, "n")
    fs = watch(store.writer(path), Pacer(None))
    with fs.create_stream(fs.concat_path(path, "f"), "wb") as f:
        for i in range(10):
            f.write(bytes([i]) * 4096)
    (name, size, digest) = (fs.written()[0].name, fs.written()[0].size, fs.written()[0].digest)
    with open(Path(path) / "f", "rb") as f:
        assert (name, (size, digest)) == ("f", digest_of([f.read()]))


def test_an_unusable_target_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PersistError, match="cannot prepare"):
        Store(str(blocker / "persist")).begin(1, "n")
    with pytest.raises(PersistError, match="cannot be opened"):
        Store("nosuchprotocol://bucket/x")
