"""The fast engine: Intel ISA-L's erasure-code kernels (SIMD GF(2^8) dot products) through ctypes.

Where the library comes from, first found wins:
  1. $ECSNAP_ISAL_LIB, an explicit path (when set, nothing else is tried);
  2. the copy bundled in the pyeclib wheel (site-packages/pyeclib.libs/libisal*.so*), so that
     `pip install pyeclib` is all a machine needs;
  3. the system library (ctypes.util.find_library("isal"), then libisal.so.2: Debian's libisal2).
We never import pyeclib itself, only dlopen its copy of ISA-L.

After loading, a small encode is checked against our own GF(2^8) arithmetic: a library that is not
the ISA-L we expect is refused rather than trusted to write parity.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from smp.codec import gf256
from smp.codec.buffers import Bytes
from smp.codec.engine import run_chunks
from smp.codec.gf256 import Matrix

ENV_LIB = "ECSNAP_ISAL_LIB"

# Bytes per native call and per unit of work handed to a thread. 1 MiB measured best on 16 MiB
# shards (smaller pieces add per-call overhead, larger ones balance worse across threads).
CHUNK = 1 << 20


@dataclass(frozen=True)
class IsalLibrary:
    """A loaded, verified ISA-L and where it came from."""

    path: str
    source: str  # "ECSNAP_ISAL_LIB", "pyeclib wheel" or "system"
    cdll: ctypes.CDLL

    def describe(self) -> str:
        return f"ISA-L {self.path} ({self.source})"


class IsalUnavailable(RuntimeError):
    """ISA-L could not be loaded; the message lists every place tried and why it failed."""


def candidates() -> list[tuple[str, str]]:
    """(path or soname, source) pairs to try, in order."""
    explicit = os.environ.get(ENV_LIB)
    if explicit:
        return [(explicit, ENV_LIB)]
    found: list[tuple[str, str]] = []
    try:
        spec = importlib.util.find_spec("pyeclib")  # locates the package without importing it
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for pkg_dir in spec.submodule_search_locations:
            pkg = Path(pkg_dir)
            # auditwheel puts vendored libraries in "<pkg>.libs" next to the package.
            for libs in (pkg.parent / f"{pkg.name}.libs", pkg / ".libs"):
                for path in sorted(glob.glob(str(libs / "libisal*.so*"))):
                    found.append((path, "pyeclib wheel"))
    system = ctypes.util.find_library("isal")
    if system:
        found.append((system, "system"))
    found.append(("libisal.so.2", "system"))
    return found


def _bind(cdll: ctypes.CDLL) -> None:
    cdll.ec_init_tables.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    cdll.ec_init_tables.restype = None
    cdll.ec_encode_data.argtypes = [
        ctypes.c_int,  # len
        ctypes.c_int,  # k (inputs)
        ctypes.c_int,  # rows (outputs)
        ctypes.c_void_p,  # gftbls
        ctypes.c_void_p,  # unsigned char **data
        ctypes.c_void_p,  # unsigned char **coding
    ]
    cdll.ec_encode_data.restype = None
    cdll.ec_encode_data_update.argtypes = [
        ctypes.c_int,  # len
        ctypes.c_int,  # k
        ctypes.c_int,  # rows
        ctypes.c_int,  # vec_i: which input this buffer is
        ctypes.c_void_p,  # gftbls
        ctypes.c_void_p,  # unsigned char *data
        ctypes.c_void_p,  # unsigned char **coding
    ]
    cdll.ec_encode_data_update.restype = None


def _self_test(engine: IsalEngine) -> None:
    # Cover what the CPU-specific kernels special-case: short lengths (scalar fallbacks), odd tails
    # after the SIMD body, and more than 6 output rows (the kernels work in groups of up to 6).
    rng = np.random.default_rng(1)
    for rows, cols, length in ((3, 5, 101), (7, 3, 300), (2, 2, 1), (1, 4, 33)):
        matrix = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
        inputs = [rng.integers(0, 256, size=length, dtype=np.uint8) for _ in range(cols)]
        want = gf256.matmul(matrix, np.stack(inputs))
        got = [np.empty(length, dtype=np.uint8) for _ in range(rows)]
        engine.apply(matrix, inputs, got, accumulate=False)
        encoded = np.array_equal(np.stack(got), want)
        engine.apply(matrix, inputs, got, accumulate=True)  # x ^ x == 0
        if not encoded or np.stack(got).any():
            raise IsalUnavailable(
                f"{engine.library.path} computed wrong GF(2^8) products "
                f"({rows}x{cols} matrix, {length} bytes); not using it"
            )


_lock = threading.Lock()
_loaded: IsalLibrary | None = None
_failure: str | None = None


def load() -> IsalLibrary:
    """The process's ISA-L (loaded and verified once); IsalUnavailable says why not."""
    global _loaded, _failure
    with _lock:
        if _loaded is not None:
            return _loaded
        if _failure is not None:
            raise IsalUnavailable(_failure)
        errors: list[str] = []
        for path, source in candidates():
            try:
                cdll = ctypes.CDLL(path)
                _bind(cdll)
                lib = IsalLibrary(path=path, source=source, cdll=cdll)
                _self_test(IsalEngine(lib, threads=1))
            except (OSError, AttributeError, IsalUnavailable) as exc:
                errors.append(f"{path} ({source}): {exc}")
                continue
            _loaded = lib
            return lib
        _failure = (
            "ISA-L not found: "
            + "; ".join(errors)
            + (
                " -- install pyeclib (its wheel bundles ISA-L) or Debian's libisal2, "
                f"or point {ENV_LIB} at libisal.so"
            )
        )
        raise IsalUnavailable(_failure)


@lru_cache(maxsize=512)
def _tables(
    cdll: ctypes.CDLL, rows: int, cols: int, coefficients: bytes
) -> ctypes.Array[ctypes.c_char]:
    # ISA-L expands each coefficient into 32 bytes of nibble lookup tables (8 with GFNI); the
    # expansion is cheap but not free, and a codec reuses a handful of matrices forever.
    out = ctypes.create_string_buffer(32 * rows * cols)
    cdll.ec_init_tables(cols, rows, coefficients, out)
    return out


class IsalEngine:
    """Engine (see engine.py) on ISA-L's ec_encode_data / ec_encode_data_update."""

    name = "isal"

    def __init__(self, library: IsalLibrary, threads: int) -> None:
        self.library = library
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
        cdll = self.library.cdll
        tables = _tables(cdll, rows, cols, np.ascontiguousarray(matrix).tobytes())
        in_addrs = [a.ctypes.data for a in inputs]
        out_addrs = [a.ctypes.data for a in outputs]
        in_ptrs_t = ctypes.c_void_p * cols
        out_ptrs_t = ctypes.c_void_p * rows

        def work(start: int, stop: int) -> None:
            outs = out_ptrs_t(*[a + start for a in out_addrs])
            if not accumulate:  # ec_encode_data overwrites its outputs
                ins = in_ptrs_t(*[a + start for a in in_addrs])
                cdll.ec_encode_data(stop - start, cols, rows, tables, ins, outs)
                return
            # ec_encode_data_update XORs input vec_i's share into the outputs.
            for i, addr in enumerate(in_addrs):
                cdll.ec_encode_data_update(stop - start, cols, rows, i, tables, addr + start, outs)

        # The arrays (and the caller's buffers behind them) stay referenced until we return.
        run_chunks(length, CHUNK, self.threads, work)
