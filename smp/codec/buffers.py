"""Caller buffers -> flat uint8 numpy views, with every check done before any engine touches them.

Engines (ISA-L through raw pointers included) only ever see 1-D, C-contiguous uint8 arrays of equal
length, writable where they are outputs, and outputs that overlap nothing else in the call. Views
are made with np.frombuffer / reshape, so no shard is ever copied.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import Any, TypeAlias, Union

import numpy as np
import numpy.typing as npt

Bytes: TypeAlias = npt.NDArray[np.uint8]

# What callers may pass as a shard: any contiguous byte buffer. numpy arrays must be uint8 (checked
# at run time: the type admits any ndarray so a float array gets a clear CodecError, not a crash).
Buffer: TypeAlias = Union["np.ndarray[Any, Any]", bytes, bytearray, memoryview, mmap.mmap]


class CodecError(ValueError):
    """Bad arguments to the erasure codec; the message says what is wrong and what is expected."""


def as_bytes(buf: object, what: str, *, writable: bool = False) -> Bytes:
    """A 1-D uint8 view of `buf` (no copy); `what` names it in error messages."""
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8:
            raise CodecError(
                f"{what} is a numpy array of dtype {buf.dtype}; expected uint8 "
                "(reinterpret it with .view(np.uint8) if its bytes are what you mean)"
            )
        if not buf.flags.c_contiguous:
            raise CodecError(f"{what} is not C-contiguous; pass a contiguous array or slice")
        if writable and not buf.flags.writeable:
            raise CodecError(f"{what} is a read-only array; outputs must be writable")
        flat: Bytes = buf.reshape(-1)
        return flat
    if isinstance(buf, (str, int, float)) or buf is None:
        raise CodecError(f"{what} is a {type(buf).__name__}; expected a bytes-like buffer")
    try:
        view = memoryview(buf)  # type: ignore[arg-type]  # anything exporting the buffer protocol
        itemsize, contiguous, readonly = view.itemsize, view.c_contiguous, view.readonly
    except TypeError:
        raise CodecError(
            f"{what} is a {type(buf).__name__}, which is not a buffer; expected a uint8 numpy "
            "array, bytes, bytearray, memoryview or mmap"
        ) from None
    except ValueError as exc:  # a closed mmap, a released memoryview
        raise CodecError(f"{what} cannot be used: {exc}") from None
    if itemsize != 1:
        raise CodecError(
            f"{what} is a memoryview of format {view.format!r} (itemsize {itemsize}); "
            "expected bytes: use memoryview.cast('B')"
        )
    if not contiguous:
        raise CodecError(f"{what} is not C-contiguous; pass a contiguous buffer or slice")
    if writable and readonly:
        raise CodecError(
            f"{what} is read-only ({type(buf).__name__}); outputs must be writable "
            "(bytearray, writable mmap/memoryview, or numpy uint8 array)"
        )
    return np.frombuffer(view, dtype=np.uint8)


def as_bytes_list(
    bufs: Sequence[object], what: str, count: int, *, writable: bool = False
) -> list[Bytes]:
    """Views of a sequence of exactly `count` buffers, named `what[i]` in errors."""
    if isinstance(bufs, (bytes, bytearray, memoryview, np.ndarray, str)):
        raise CodecError(f"{what} must be a sequence of {count} buffers, not a single buffer")
    try:
        n = len(bufs)
    except TypeError:
        raise CodecError(f"{what} must be a sequence of {count} buffers") from None
    if n != count:
        raise CodecError(f"{what} has {n} buffers; expected {count}")
    return [as_bytes(b, f"{what}[{i}]", writable=writable) for i, b in enumerate(bufs)]


def check_lengths(named: Sequence[tuple[str, Bytes]]) -> int:
    """The common length of all buffers; CodecError naming the first that differs."""
    if not named:
        return 0
    first_name, first = named[0]
    for name, arr in named[1:]:
        if arr.size != first.size:
            raise CodecError(
                f"{name} has {arr.size} bytes but {first_name} has {first.size}: all shards of "
                "one call must have the same length (pad the last stripe yourself)"
            )
    return int(first.size)


def check_no_overlap(
    outputs: Sequence[tuple[str, Bytes]], inputs: Sequence[tuple[str, Bytes]]
) -> None:
    """Outputs must not overlap inputs or each other: the engines read while they write."""
    for i, (oname, out) in enumerate(outputs):
        for iname, arr in [*inputs, *outputs[i + 1 :]]:
            # For 1-D contiguous arrays the bounds test is exact, and it costs no scan.
            if np.may_share_memory(out, arr):
                raise CodecError(
                    f"{oname} overlaps {iname} in memory; outputs need their own buffers"
                )


def check_index(value: object, what: str, limit: int) -> int:
    """A shard index as int in [0, limit); bools and non-integers are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CodecError(f"{what} must be an int, got {type(value).__name__}")
    index = int(value)
    if not 0 <= index < limit:
        raise CodecError(f"{what} = {index} is out of range; expected 0 <= index < {limit}")
    return index
