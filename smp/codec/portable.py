"""The portable engine: GF(2^8) matrix application in numpy alone, no native code of our own.

A byte-at-a-time table lookup costs numpy as much per element as a 2-byte one, so we multiply two
bytes per lookup: for coefficient c, a 65536-entry uint16 table maps the pair (hi, lo) to
(c*hi, c*lo). Each input piece is widened once to intp indices (np.take converts non-intp indices
on every call otherwise, and m outputs reuse them), then per output: one np.take into scratch and
one XOR into the output. Coefficient 1 is a plain XOR and 0 is skipped, so a single all-ones row
(m = 1 parity) is a pure numpy XOR with no lookups. An odd trailing byte is done on its own.

Pieces are large enough to amortize numpy's per-call overhead; threads (engine.run_chunks) take
chunks of a few pieces, as numpy releases the GIL inside take and xor.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from smp.codec.buffers import Bytes
from smp.codec.engine import run_chunks
from smp.codec.gf256 import MUL, Matrix

# Bytes of each input handled per lookup round. Python's per-call cost dominates below this:
# on 16 MiB shards 32 KiB pieces (everything L2-resident) ran ~1.5x slower than 256 KiB ones,
# whose intp indices (1 MiB) stream from L3 just fine. Even, so only a call's last piece is odd.
PIECE = 256 << 10
# Bytes per unit of work handed to a thread; a multiple of PIECE.
CHUNK = 1 << 20


@lru_cache(maxsize=64)
def pair_table(c: int) -> npt.NDArray[np.uint16]:
    """T[v] for a native uint16 v made of bytes (b0, b1) is the uint16 made of (c*b0, c*b1)."""
    row = MUL[c].astype(np.uint16)
    # Index hi*256 + lo. Whatever the machine's byte order, the byte that lands in the high half of
    # v comes back multiplied in the high half of T[v], so a uint16 view round-trips bytes.
    table: npt.NDArray[np.uint16] = ((row[:, None] << 8) | row[None, :]).reshape(-1)
    table.flags.writeable = False
    return table


class _Scratch(threading.local):
    def __init__(self) -> None:
        super().__init__()
        self.index = np.empty(PIECE // 2, dtype=np.intp)
        self.product = np.empty(PIECE // 2, dtype=np.uint16)


_scratch = _Scratch()


class NumpyEngine:
    """Engine (see engine.py) in numpy only."""

    name = "numpy"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def apply(
        self,
        matrix: Matrix,
        inputs: Sequence[Bytes],
        outputs: Sequence[Bytes],
        accumulate: bool,
    ) -> None:
        rows, cols = matrix.shape
        length = inputs[0].size if inputs else 0
        if rows == 0 or cols == 0 or length == 0:
            if not accumulate:
                for out in outputs:
                    out.fill(0)
            return
        coefs = [[int(c) for c in matrix[:, i]] for i in range(cols)]  # coefs[i][j]
        tables = {c: pair_table(c) for col in coefs for c in col if c > 1}
        # With no lookups, big pieces save Python overhead and there is no scratch to keep hot.
        piece = PIECE if tables else CHUNK

        def work(start: int, stop: int) -> None:
            for a in range(start, stop, piece):
                self._piece(coefs, tables, inputs, outputs, accumulate, a, min(a + piece, stop))

        run_chunks(length, CHUNK, self.threads, work)

    @staticmethod
    def _piece(
        coefs: list[list[int]],
        tables: dict[int, npt.NDArray[np.uint16]],
        inputs: Sequence[Bytes],
        outputs: Sequence[Bytes],
        accumulate: bool,
        start: int,
        stop: int,
    ) -> None:
        outs = [out[start:stop] for out in outputs]
        written = [accumulate] * len(outs)  # False: this piece of output j holds garbage still
        pairs = (stop - start) // 2
        even = 2 * pairs
        odd = stop - start > even
        index = _scratch.index[:pairs]
        product = _scratch.product[:pairs]
        product_bytes = product.view(np.uint8)
        for i, col in enumerate(coefs):
            src = inputs[i][start:stop]
            if any(c > 1 for c in col):
                # view() works on unaligned memory too; copyto widens (and aligns) it.
                np.copyto(index, src[:even].view(np.uint16), casting="unsafe")
            for j, c in enumerate(col):
                if c == 0:
                    continue
                out = outs[j]
                if c == 1:
                    if written[j]:
                        np.bitwise_xor(out, src, out=out)
                    else:
                        np.copyto(out, src)
                    written[j] = True
                    continue
                # mode="wrap" skips the bounds checks of "raise"; every uint16 is a valid index.
                np.take(tables[c], index, out=product, mode="wrap")
                head = out[:even]
                if written[j]:
                    np.bitwise_xor(head, product_bytes, out=head)
                else:
                    np.copyto(head, product_bytes)
                if odd:
                    last = int(MUL[c, int(src[-1])])
                    out[-1] = (int(out[-1]) ^ last) if written[j] else last
                written[j] = True
        for j, out in enumerate(outs):
            if not written[j]:  # a row of zeros (only possible for a zero coefficient column)
                out.fill(0)
