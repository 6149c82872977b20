"""The Codec: argument checking and engine choice around one Reed-Solomon (k, m) code.

Everything a caller can get wrong is rejected here with a CodecError before an engine (and so
before any native call) sees it; the engines then only compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from smp.codec import gf256
from smp.codec.buffers import (
    Buffer,
    Bytes,
    CodecError,
    as_bytes,
    as_bytes_list,
    check_index,
    check_lengths,
    check_no_overlap,
)
from smp.codec.engine import Engine, default_threads
from smp.codec.gf256 import MAX_SHARDS, Matrix
from smp.codec.isal import IsalEngine, IsalUnavailable
from smp.codec.isal import load as load_isal
from smp.codec.portable import NumpyEngine

ENGINES = ("isal", "numpy")


def available_engines() -> list[str]:
    """Engines that work in this process, fastest first."""
    try:
        load_isal()
    except IsalUnavailable:
        return ["numpy"]
    return ["isal", "numpy"]


def default_engine() -> str:
    """What engine="auto" picks: "isal" when ISA-L loads, else "numpy"."""
    return available_engines()[0]


def describe_engine(engine: str = "auto") -> str:
    """One line for logs and status: the engine and, for ISA-L, which library file, or why not."""
    if engine not in ("auto", *ENGINES):
        raise CodecError(f"unknown codec engine {engine!r}; expected auto, isal or numpy")
    try:
        lib = load_isal()
    except IsalUnavailable as exc:
        if engine == "isal":
            return f"isal unavailable: {exc}"
        return f"numpy (portable; isal unavailable: {exc})"
    if engine == "numpy":
        return "numpy (portable)"
    return f"isal: {lib.describe()}"


def _make_engine(engine: str, threads: int) -> Engine:
    if engine not in ("auto", *ENGINES):
        raise CodecError(f"unknown codec engine {engine!r}; expected auto, isal or numpy")
    if engine == "numpy":
        return NumpyEngine(threads)
    try:
        return IsalEngine(load_isal(), threads)
    except IsalUnavailable as exc:
        if engine == "isal":
            raise CodecError(f"codec engine 'isal' is not available: {exc}") from None
        return NumpyEngine(threads)


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"{what} must be an int, got {type(value).__name__}")
    return value


class Codec:
    """Systematic Reed-Solomon over GF(2^8): k data shards, m parity shards, reedsolo's code.

    Shard indices are 0..k-1 for data, k..k+m-1 for parity. Byte p of the m parity shards is
    reedsolo.RSCodec(m, nsize=k+m)'s ECC of byte p of the k data shards, so any k shards give back
    all the others.

    Buffers: uint8 numpy arrays or anything exporting a contiguous byte buffer (bytes for inputs;
    bytearray, writable memoryview, numpy arrays for outputs). Nothing is copied. All shards of one
    call must have the same length, which may be anything including 0 and odd: the caller pads a
    short last stripe (with zeros, say) and remembers the true length. Byte ranges work by passing
    slices (memoryview(x)[a:b] or arr[a:b]; not mmap[a:b], which copies): the code is per byte
    position, so encoding pieces gives the same bytes as encoding the whole.

    Thread-safe: one Codec may serve concurrent calls on distinct output buffers.
    """

    def __init__(self, k: int, m: int, engine: str = "auto", threads: int | None = None) -> None:
        k = _check_int(k, "k")
        m = _check_int(m, "m")
        if k < 1 or m < 1 or k + m > MAX_SHARDS:
            raise CodecError(
                f"k={k}, m={m} is not a valid code: need k >= 1, m >= 1 and k + m <= "
                f"{MAX_SHARDS} (a GF(2^8) Reed-Solomon code word has at most 255 symbols)"
            )
        if threads is None:
            threads = default_threads()
        elif _check_int(threads, "threads") < 1:
            raise CodecError(f"threads must be >= 1, got {threads}")
        if not isinstance(engine, str):
            raise CodecError(f"engine must be a str, got {type(engine).__name__}")
        self.k = k
        self.m = m
        self._engine = _make_engine(engine, threads)
        self._matrix = gf256.parity_matrix(k, m)

    def __repr__(self) -> str:
        return f"Codec(k={self.k}, m={self.m}, engine={self.engine!r}, threads={self.threads})"

    @property
    def n(self) -> int:
        """Total shards, k + m."""
        return self.k + self.m

    @property
    def engine(self) -> str:
        """The engine in use: "isal" or "numpy"."""
        return self._engine.name

    @property
    def threads(self) -> int:
        """Threads one call may use (the caller's included)."""
        return self._engine.threads

    @property
    def matrix(self) -> Matrix:
        """The (m, k) parity coefficients: parity j = XOR_i matrix[j, i] * data i (read-only)."""
        return self._matrix

    def encode(self, data: Sequence[Buffer], parity: Sequence[Buffer]) -> None:
        """Write the m parity shards of the k data shards into `parity` (overwritten)."""
        ins = as_bytes_list(data, "data", self.k)
        outs = as_bytes_list(parity, "parity", self.m, writable=True)
        self._run(self._matrix, "data", ins, "parity", outs, accumulate=False)

    def partial_parity(
        self, i: int, data_i: Buffer, parity: Sequence[Buffer], accumulate: bool = True
    ) -> None:
        """Add data shard i's share to each parity shard: parity[j] ^= matrix[j, i] * data_i.

        XORing in the shares of all k data shards, in any order, into zeroed parity buffers gives
        encode()'s parity. accumulate=False overwrites parity with this share alone instead.
        """
        i = check_index(i, "data shard index i", self.k)
        ins = [as_bytes(data_i, f"data[{i}]")]
        outs = as_bytes_list(parity, "parity", self.m, writable=True)
        column = self._matrix[:, i : i + 1]
        self._run(column, f"data[{i}]", ins, "parity", outs, accumulate=accumulate)

    def decode(
        self, shards: Mapping[int, Buffer], lost: Sequence[int], out: Sequence[Buffer]
    ) -> None:
        """Rebuild the shards numbered `lost` (data or parity) into `out`, from >= k survivors.

        `shards` maps shard index -> buffer; when more than k survive, the lowest k indices are used
        (deterministic, so the cached inverse for that set is reused). `lost` need not name every
        missing shard: rebuild just what you need, in the order of `out`.
        """
        survivors, ins = self._survivors(shards)
        targets = self._targets(lost, shards)
        outs = as_bytes_list(out, "out", len(targets), writable=True)
        outs_named = [
            (f"out[{n}] (shard {t})", a) for n, (t, a) in enumerate(zip(targets, outs, strict=True))
        ]
        check_lengths([*ins, *outs_named])
        check_no_overlap(outs_named, ins)
        if not targets:
            return
        matrix = gf256.decode_matrix(self.k, self.m, survivors, targets)
        self._engine.apply(matrix, [a for _, a in ins], outs, accumulate=False)

    def partial_decode(
        self,
        survivors: Sequence[int],
        lost: Sequence[int],
        index: int,
        shard: Buffer,
        out: Sequence[Buffer],
        accumulate: bool = True,
    ) -> None:
        """Add survivor `index`'s share to each rebuilt shard (streaming rebuild).

        `survivors` is the exact set of k shard indices the rebuild uses; XORing the shares of all
        of them into zeroed `out` buffers gives what decode() writes.
        """
        chosen = self._exact_survivors(survivors)
        targets = self._targets(lost, dict.fromkeys(chosen))
        index = check_index(index, "survivor index", self.n)
        if index not in chosen:
            raise CodecError(f"shard {index} is not one of the survivors {list(chosen)}")
        ins = [as_bytes(shard, f"shard {index}")]
        outs = as_bytes_list(out, "out", len(targets), writable=True)
        column = chosen.index(index)
        matrix = gf256.decode_matrix(self.k, self.m, chosen, targets)[:, column : column + 1]
        self._run(matrix, f"shard {index}", ins, "out", outs, accumulate=accumulate)

    # -- argument checking -------------------------------------------------------------------

    def _run(
        self,
        matrix: Matrix,
        in_name: str,
        ins: list[Bytes],
        out_name: str,
        outs: list[Bytes],
        accumulate: bool,
    ) -> None:
        ins_named = [(f"{in_name}[{n}]" if len(ins) > 1 else in_name, a) for n, a in enumerate(ins)]
        outs_named = [(f"{out_name}[{n}]", a) for n, a in enumerate(outs)]
        check_lengths([*ins_named, *outs_named])
        check_no_overlap(outs_named, ins_named)
        self._engine.apply(matrix, ins, outs, accumulate=accumulate)

    def _survivors(
        self, shards: Mapping[int, Buffer]
    ) -> tuple[tuple[int, ...], list[tuple[str, Bytes]]]:
        if not isinstance(shards, Mapping):
            raise CodecError(
                f"shards must be a mapping of shard index -> buffer, got {type(shards).__name__}"
            )
        indices = sorted(check_index(i, "shard index", self.n) for i in shards)
        if len(indices) < self.k:
            raise CodecError(
                f"only {len(indices)} shards survive ({indices}); rebuilding needs at least "
                f"k={self.k} of the {self.n}"
            )
        named = {i: (f"shard {i}", as_bytes(shards[i], f"shard {i}")) for i in indices}
        check_lengths(list(named.values()))  # unused extra survivors must fit too
        chosen = tuple(indices[: self.k])
        return chosen, [named[i] for i in chosen]

    def _exact_survivors(self, survivors: Sequence[int]) -> tuple[int, ...]:
        if isinstance(survivors, (str, bytes)) or not isinstance(survivors, (Sequence, np.ndarray)):
            raise CodecError(f"survivors must be a sequence of {self.k} shard indices")
        chosen = tuple(sorted(check_index(i, "survivor index", self.n) for i in survivors))
        if len(set(chosen)) != len(chosen):
            raise CodecError(f"survivors has duplicate indices: {list(survivors)}")
        if len(chosen) != self.k:
            raise CodecError(f"survivors lists {len(chosen)} shards; expected exactly k={self.k}")
        return chosen

    def _targets(self, lost: Sequence[int], present: Mapping[int, object]) -> tuple[int, ...]:
        if isinstance(lost, (str, bytes)) or not isinstance(lost, (Sequence, np.ndarray)):
            raise CodecError(f"lost must be a sequence of shard indices, got {type(lost).__name__}")
        targets = tuple(check_index(t, f"lost[{n}]", self.n) for n, t in enumerate(lost))
        if len(set(targets)) != len(targets):
            raise CodecError(f"lost has duplicate indices: {list(targets)}")
        present_set = {int(i) for i in present}
        clash = sorted(set(targets) & present_set)
        if clash:
            raise CodecError(
                f"lost shards {clash} are also given as survivors; ask for missing ones"
            )
        return targets
