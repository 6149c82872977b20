"""The codec computes reedsolo's code, rebuilds any m lost shards, and its engines agree."""

from __future__ import annotations

import itertools
import mmap
import random
import threading

import numpy as np
import pytest
import reedsolo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smp.codec import (
    Buffer,
    Codec,
    CodecError,
    available_engines,
    default_engine,
    describe_engine,
    gf256,
    isal,
    portable,
)

ENGINES = ["isal", "numpy"]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Small layouts for property tests (k + m <= 12), plus two fixed large ones elsewhere.
layouts = st.integers(1, 10).flatmap(lambda k: st.tuples(st.just(k), st.integers(1, 12 - k)))
lengths = st.one_of(st.sampled_from([0, 1, 2, 3, 31, 32, 33, 63, 64, 65]), st.integers(0, 3000))


def need(engine: str) -> None:
    if engine not in available_engines():
        pytest.skip(f"{engine} engine unavailable: {describe_engine(engine)}")


def shards(seed: int, count: int, length: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, length, dtype=np.uint8) for _ in range(count)]


def encoded(codec: Codec, data: list[np.ndarray]) -> list[np.ndarray]:
    length = data[0].size if data else 0
    parity = [
        np.full(length, 0xA5, np.uint8) for _ in range(codec.m)
    ]  # garbage: must be overwritten
    codec.encode(data, parity)
    return parity


def reedsolo_parity(k: int, m: int, data: list[np.ndarray], column: int) -> bytes:
    rs = reedsolo.RSCodec(m, nsize=k + m)
    return bytes(rs.encode(bytes(int(d[column]) for d in data))[-m:])


# -- the code is reedsolo's ---------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
@SETTINGS
@given(layout=layouts, length=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_parity_is_reedsolo_ecc(
    engine: str, layout: tuple[int, int], length: int, seed: int
) -> None:
    need(engine)
    k, m = layout
    data = shards(seed, k, length)
    parity = encoded(Codec(k, m, engine=engine), data)
    for column in range(length):
        assert bytes(int(p[column]) for p in parity) == reedsolo_parity(k, m, data, column)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("k, m", [(20, 4), (251, 4), (128, 127), (1, 254), (254, 1)])
def test_parity_is_reedsolo_ecc_large_layouts(k: int, m: int) -> None:
    data = shards(k * m, k, 5)
    for engine in available_engines():
        parity = encoded(Codec(k, m, engine=engine), data)
        for column in range(5):
            assert bytes(int(p[column]) for p in parity) == reedsolo_parity(k, m, data, column)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 16, 254])
def test_single_parity_is_xor(engine: str, k: int) -> None:
    need(engine)
    codec = Codec(k, 1, engine=engine)
    assert (codec.matrix == 1).all()
    data = shards(k, k, 1001)
    assert np.array_equal(encoded(codec, data)[0], np.bitwise_xor.reduce(np.stack(data)))


def test_matrix_is_cached_and_read_only() -> None:
    a, b = Codec(4, 2, engine="numpy"), Codec(4, 2, engine="numpy")
    assert a.matrix is b.matrix and a.matrix.shape == (2, 4) and a.matrix.dtype == np.uint8
    with pytest.raises(ValueError):
        a.matrix[0, 0] = 0


# -- rebuilding -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
@SETTINGS
@given(layout=layouts, length=lengths, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_any_m_lost_shards_come_back(
    engine: str, layout: tuple[int, int], length: int, seed: int, data: st.DataObject
) -> None:
    need(engine)
    k, m = layout
    codec = Codec(k, m, engine=engine)
    originals = shards(seed, k, length)
    every = [*originals, *encoded(codec, originals)]
    lost = data.draw(st.lists(st.integers(0, k + m - 1), min_size=1, max_size=m, unique=True))
    survivors = {i: every[i] for i in range(k + m) if i not in lost}
    out = [np.full(length, 0x5A, np.uint8) for _ in lost]
    codec.decode(survivors, lost, out)
    for index, rebuilt in zip(lost, out, strict=True):
        assert np.array_equal(rebuilt, every[index]), f"shard {index} of {k}+{m}, lost {lost}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("k, m", [(20, 4), (4, 2), (3, 3)])
def test_every_erasure_pattern(engine: str, k: int, m: int) -> None:
    need(engine)
    codec = Codec(k, m, engine=engine)
    originals = shards(7, k, 77)
    every = [*originals, *encoded(codec, originals)]
    patterns = list(itertools.combinations(range(k + m), m))
    for lost in random.Random(1).sample(patterns, min(len(patterns), 300)):
        out = [np.empty(77, np.uint8) for _ in lost]
        codec.decode({i: every[i] for i in range(k + m) if i not in lost}, lost, out)
        assert all(np.array_equal(o, every[i]) for i, o in zip(lost, out, strict=True)), lost


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ENGINES)
def test_partial_decode_adds_up_to_decode(engine: str) -> None:
    need(engine)
    k, m = 5, 3
    codec = Codec(k, m, engine=engine)
    originals = shards(3, k, 999)
    every = [*originals, *encoded(codec, originals)]
    survivors, lost = [1, 3, 4, 6, 7], [0, 2, 5]
    out = [np.zeros(999, np.uint8) for _ in lost]
    for s in reversed(survivors):  # shares may arrive in any order
        codec.partial_decode(survivors, lost, s, every[s], out)
    assert all(np.array_equal(o, every[i]) for i, o in zip(lost, out, strict=True))


# -- engines, streaming, byte ranges --------------------------------------------------------------


@pytest.mark.timeout(60)
@SETTINGS
@given(layout=layouts, length=lengths, seed=st.integers(0, 2**32 - 1))
def test_engines_agree_byte_for_byte(layout: tuple[int, int], length: int, seed: int) -> None:
    need("isal")
    k, m = layout
    data = shards(seed, k, length)
    fast, portable = Codec(k, m, engine="isal"), Codec(k, m, engine="numpy")
    assert fast.engine == "isal" and portable.engine == "numpy"
    pf, pp = encoded(fast, data), encoded(portable, data)
    assert all(np.array_equal(a, b) for a, b in zip(pf, pp, strict=True))
    lost = list(range(min(m, k)))
    survivors = {i: s for i, s in enumerate([*data, *pf]) if i not in lost}
    of, op = ([np.empty(length, np.uint8) for _ in lost] for _ in range(2))
    fast.decode(survivors, lost, of)
    portable.decode(survivors, lost, op)
    assert all(np.array_equal(a, b) for a, b in zip(of, op, strict=True))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_multi_chunk_threaded_ranges(engine: str, threads: int) -> None:
    # Longer than several chunks, odd, and unaligned: exercises the thread pool and the tail.
    need(engine)
    k, m, length = 3, 2, (5 << 20) + 3
    base = shards(11, k + 1, length + 1)
    data = [b[1:] for b in base[:k]]  # odd addresses
    want = [np.empty(length, np.uint8) for _ in range(m)]
    Codec(k, m, engine="numpy", threads=1).encode(
        [d[:4096] for d in data], [w[:4096] for w in want]
    )
    got = encoded(Codec(k, m, engine=engine, threads=threads), data)
    assert all(np.array_equal(g[:4096], w[:4096]) for g, w in zip(got, want, strict=True))
    column = length - 1
    assert bytes(int(p[column]) for p in got) == reedsolo_parity(k, m, data, column)
    out = [np.empty(length, np.uint8) for _ in range(2)]
    Codec(k, m, engine=engine, threads=threads).decode(
        {2: data[2], 3: got[0], 4: got[1]}, [0, 1], out
    )
    assert np.array_equal(out[0], data[0]) and np.array_equal(out[1], data[1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
@SETTINGS
@given(layout=layouts, length=lengths, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_partial_parity_adds_up_to_encode(
    engine: str, layout: tuple[int, int], length: int, seed: int, data: st.DataObject
) -> None:
    need(engine)
    k, m = layout
    codec = Codec(k, m, engine=engine)
    originals = shards(seed, k, length)
    order = data.draw(st.permutations(range(k)))
    first, *rest = order
    parity = [np.full(length, 0x33, np.uint8) for _ in range(m)]
    codec.partial_parity(first, originals[first], parity, accumulate=False)  # overwrites
    for i in rest:
        codec.partial_parity(i, originals[i], parity)
    assert all(np.array_equal(a, b) for a, b in zip(parity, encoded(codec, originals), strict=True))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
@SETTINGS
@given(layout=layouts, length=lengths, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_encoding_pieces_equals_encoding_whole(
    engine: str, layout: tuple[int, int], length: int, seed: int, data: st.DataObject
) -> None:
    need(engine)
    k, m = layout
    codec = Codec(k, m, engine=engine)
    originals = shards(seed, k, length)
    cuts = sorted(data.draw(st.lists(st.integers(0, length), max_size=6)))
    views = [memoryview(bytearray(length)) for _ in range(m)]
    for a, b in itertools.pairwise([0, *cuts, length]):
        codec.encode([d.data[a:b] for d in originals], [v[a:b] for v in views])
    whole = encoded(codec, originals)
    assert all(bytes(v) == w.tobytes() for v, w in zip(views, whole, strict=True))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ENGINES)
def test_buffer_kinds(engine: str) -> None:
    need(engine)
    codec = Codec(3, 2, engine=engine)
    arrays = shards(5, 3, 4096)
    want = encoded(codec, arrays)
    with mmap.mmap(-1, 3 * 4096) as region:
        window, grid = memoryview(region)[4096:8192], np.zeros((64, 64), np.uint8)
        ins: list[Buffer] = [arrays[0].tobytes(), bytearray(arrays[1]), arrays[2].reshape(64, 64)]
        codec.encode(ins, [window, grid])
        assert bytes(window) == want[0].tobytes() and grid.tobytes() == want[1].tobytes()
        window.release()  # or closing the mmap fails


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ENGINES)
def test_concurrent_calls_share_one_codec(engine: str) -> None:
    need(engine)
    codec = Codec(4, 2, engine=engine, threads=2)
    jobs = [shards(seed, 4, (3 << 20) + seed) for seed in range(4)]
    results: dict[int, list[np.ndarray]] = {}

    def work(seed: int) -> None:
        results[seed] = encoded(codec, jobs[seed])

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    single = Codec(4, 2, engine=engine, threads=1)
    for seed, data in enumerate(jobs):
        assert all(
            np.array_equal(a, b) for a, b in zip(results[seed], encoded(single, data), strict=True)
        )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    length=lengths,
    seed=st.integers(0, 2**32 - 1),
    accumulate=st.booleans(),
)
def test_engine_applies_any_matrix(
    engine: str, shape: tuple[int, int], length: int, seed: int, accumulate: bool
) -> None:
    # Matrices full of 0 and 1 (skip and XOR paths), even all-zero rows: decode matrices have them.
    need(engine)
    rows, cols = shape
    rng = np.random.default_rng(seed)
    pool = np.array([0, 1, 2, 0x8E, 0xFF], np.uint8)
    matrix = pool[rng.integers(0, len(pool), size=(rows, cols))]
    ins = shards(seed, cols, length)
    outs = shards(seed + 1, rows, length)
    want = gf256.matmul(matrix, np.stack(ins)) if length else np.zeros((rows, 0), np.uint8)
    if accumulate:
        want = want ^ np.stack(outs)
    impl = portable.NumpyEngine(2) if engine == "numpy" else isal.IsalEngine(isal.load(), 2)
    impl.apply(matrix, ins, outs, accumulate=accumulate)
    assert np.array_equal(np.stack(outs), want)


# -- engines and where ISA-L comes from -----------------------------------------------------------


def test_engine_listing() -> None:
    engines = available_engines()
    assert engines[-1] == "numpy" and default_engine() == engines[0]
    assert Codec(2, 1).engine == default_engine()
    assert describe_engine("numpy").startswith("numpy")
    if "isal" in engines:
        assert "libisal" in describe_engine() and "libisal" in describe_engine("isal")


def test_unloadable_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(isal.ENV_LIB, "/nonexistent/libisal.so.2")
    monkeypatch.setattr(isal, "_loaded", None)
    monkeypatch.setattr(isal, "_failure", None)
    with pytest.raises(CodecError, match=r"isal.*not available.*/nonexistent/libisal\.so\.2"):
        Codec(4, 2, engine="isal")
    assert Codec(4, 2).engine == "numpy"  # auto falls back
    assert available_engines() == ["numpy"]
    assert "isal unavailable" in describe_engine()


def test_explicit_isal_path(monkeypatch: pytest.MonkeyPatch) -> None:
    need("isal")
    found = isal.load()
    monkeypatch.setenv(isal.ENV_LIB, found.path)
    monkeypatch.setattr(isal, "_loaded", None)
    monkeypatch.setattr(isal, "_failure", None)
    assert isal.load().source == isal.ENV_LIB
    assert isal.candidates() == [(found.path, isal.ENV_LIB)]


def test_isal_search_order_prefers_the_pyeclib_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(isal.ENV_LIB, raising=False)
    sources = [source for _, source in isal.candidates()]
    assert sources[-1] == "system"
    assert sources == sorted(sources, key=["pyeclib wheel", "system"].index)


def test_field_inverse() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 17):
        a = gf256.generator_matrix(n, 3)[rng.permutation(n + 3)[:n]]
        assert np.array_equal(gf256.matmul(gf256.invert(a), a), np.eye(n, dtype=np.uint8))
    with pytest.raises(ValueError, match="singular"):
        gf256.invert(np.array([[1, 2], [2, 4]], dtype=np.uint8))
