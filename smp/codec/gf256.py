"""GF(2^8) arithmetic and the codec's matrices: derivation from reedsolo, inversion, caching.

The field is the one reedsolo and ISA-L both use by default: polynomial x^8+x^4+x^3+x^2+1 (0x11d),
generator 2. The parity matrix is not written down from theory but measured from reedsolo itself
(the code is linear, so encoding unit vectors yields its columns); the parity we produce is then
byte-for-byte reedsolo's by construction, and a random column is checked at derivation time so a
reedsolo with other defaults can never make us write wrong bytes silently.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Matrix: TypeAlias = npt.NDArray[np.uint8]

POLY = 0x11D
MAX_SHARDS = 255  # k + m: a GF(2^8) Reed-Solomon code word has at most 255 symbols


def _build_tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512  # doubled so exp[log a + log b] needs no modulo
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= POLY
    for i in range(255, 512):
        exp[i] = exp[i - 255]
    return exp, log


EXP, LOG = _build_tables()


def mul(a: int, b: int) -> int:
    """Product of two field elements (ints 0..255)."""
    if a == 0 or b == 0:
        return 0
    return EXP[LOG[a] + LOG[b]]


def inverse(a: int) -> int:
    """Multiplicative inverse of a non-zero field element."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return EXP[255 - LOG[a]]


def _build_mul_table() -> Matrix:
    log = np.array(LOG, dtype=np.int32)
    exp = np.array(EXP, dtype=np.uint8)
    table: Matrix = exp[log[:, None] + log[None, :]]
    table[0, :] = 0
    table[:, 0] = 0
    table.flags.writeable = False
    return table


MUL: Matrix = _build_mul_table()
"""MUL[a, b] = a * b; read-only, 64 KiB."""


def matmul(a: Matrix, b: Matrix) -> Matrix:
    """Matrix product over GF(2^8): (r x n) @ (n x c) -> (r x c)."""
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"cannot multiply {a.shape} by {b.shape}")
    products = MUL[a[:, :, None], b[None, :, :]]  # (r, n, c): every term of every sum
    out: Matrix = np.bitwise_xor.reduce(products, axis=1).astype(np.uint8)
    return out


def invert(a: Matrix) -> Matrix:
    """Inverse of a square matrix over GF(2^8) by Gauss-Jordan elimination.

    Raises ValueError when the matrix is singular (never for k rows of an MDS generator matrix).
    """
    n = a.shape[0]
    if a.shape != (n, n):
        raise ValueError(f"cannot invert a non-square {a.shape} matrix")
    work = np.concatenate([a.astype(np.uint8), np.eye(n, dtype=np.uint8)], axis=1)
    for col in range(n):
        nonzero = np.flatnonzero(work[col:, col])
        if nonzero.size == 0:
            raise ValueError("matrix is singular over GF(2^8)")
        pivot = col + int(nonzero[0])
        if pivot != col:
            work[[col, pivot]] = work[[pivot, col]]
        work[col] = MUL[inverse(int(work[col, col])), work[col]]
        # Clear the column in every other row at once: row ^= factor * pivot_row.
        factors = work[:, col].copy()
        factors[col] = 0
        work ^= MUL[factors[:, None], work[col][None, :]]
    return np.ascontiguousarray(work[:, n:])


def _frozen(a: npt.NDArray[Any]) -> Matrix:
    out = np.ascontiguousarray(a, dtype=np.uint8)
    out.flags.writeable = False  # cached and shared: nobody may edit it in place
    return out


# reedsolo keeps its field tables in module globals that RSCodec.encode swaps in; serialize our
# use so two threads deriving matrices (with possibly different codecs) cannot interleave.
_REEDSOLO_LOCK = threading.Lock()


def _reedsolo_parity(k: int, m: int, columns: list[bytes]) -> list[bytes]:
    import reedsolo  # pure Python and slow: imported only when a new (k, m) needs a matrix

    with _REEDSOLO_LOCK:
        rs = reedsolo.RSCodec(nsym=m, nsize=k + m)
        return [bytes(rs.encode(bytearray(col))[-m:]) for col in columns]


@lru_cache(maxsize=64)
def parity_matrix(k: int, m: int) -> Matrix:
    """The (m, k) matrix with parity byte j = XOR_i P[j, i] * data byte i, exactly reedsolo's.

    Column i is reedsolo's ECC of the unit message e_i; linearity makes that the whole code.
    """
    if k < 1 or m < 1 or k + m > MAX_SHARDS:
        raise ValueError(f"need k >= 1, m >= 1 and k + m <= {MAX_SHARDS}; got k={k}, m={m}")
    units = [bytes(1 if r == i else 0 for r in range(k)) for i in range(k)]
    rng = np.random.default_rng(k * 1000 + m)
    probe = rng.integers(0, 256, size=k, dtype=np.uint8)
    *columns, expected = _reedsolo_parity(k, m, [*units, probe.tobytes()])
    matrix = np.frombuffer(b"".join(columns), dtype=np.uint8).reshape(k, m).T
    got = matmul(matrix, probe.reshape(k, 1)).reshape(m)
    if got.tobytes() != expected:
        raise RuntimeError(
            f"reedsolo's RS({k}+{m}) code is not the linear code over GF(2^8)/0x11d that this "
            "codec assumes (a reedsolo with other defaults?); refusing to produce parity"
        )
    return _frozen(matrix)


@lru_cache(maxsize=64)
def generator_matrix(k: int, m: int) -> Matrix:
    """The (k+m, k) systematic generator: identity rows for data, then the parity rows."""
    return _frozen(np.concatenate([np.eye(k, dtype=np.uint8), parity_matrix(k, m)]))


@lru_cache(maxsize=256)
def survivor_inverse(k: int, m: int, survivors: tuple[int, ...]) -> Matrix:
    """Inverse of the generator rows of `survivors` (k sorted indices): maps them to the data."""
    if len(survivors) != k:
        raise ValueError(f"need exactly k={k} survivors, got {len(survivors)}")
    return _frozen(invert(generator_matrix(k, m)[list(survivors)]))


@lru_cache(maxsize=1024)
def decode_matrix(k: int, m: int, survivors: tuple[int, ...], targets: tuple[int, ...]) -> Matrix:
    """(len(targets), k) matrix: shard t = XOR_s D[t, s] * survivor s, for data and parity alike."""
    inv = survivor_inverse(k, m, survivors)
    return _frozen(matmul(generator_matrix(k, m)[list(targets)], inv))
