"""Every kind of bad argument raises CodecError saying what is wrong, and nothing is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from smp.codec import Codec, CodecError, available_engines

L = 64


def fresh(n: int, length: int = L) -> list[np.ndarray]:
    return [np.full(length, 0x77, np.uint8) for _ in range(n)]


@pytest.fixture(params=["isal", "numpy"])
def codec(request: pytest.FixtureRequest) -> Codec:
    if request.param not in available_engines():
        pytest.skip(f"{request.param} engine unavailable")
    return Codec(4, 2, engine=request.param)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0, "m": 1}, r"k=0, m=1 is not a valid code.*k >= 1"),
        ({"k": 4, "m": 0}, r"k=4, m=0 is not a valid code.*m >= 1"),
        ({"k": 250, "m": 6}, r"k \+ m <= 255"),
        ({"k": -1, "m": 2}, r"not a valid code"),
        ({"k": "4", "m": 2}, r"k must be an int, got str"),
        ({"k": True, "m": 2}, r"k must be an int, got bool"),
        ({"k": 4, "m": 2.0}, r"m must be an int, got float"),
        ({"k": 4, "m": 2, "engine": "cuda"}, r"unknown codec engine 'cuda'.*auto, isal or numpy"),
        ({"k": 4, "m": 2, "engine": None}, r"engine must be a str"),
        ({"k": 4, "m": 2, "threads": 0}, r"threads must be >= 1"),
    ],
)
def test_bad_codec_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        Codec(**kwargs)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


# The codec is typed Any here: these calls break its signature on purpose.
Case = Callable[[Any, list[np.ndarray], list[np.ndarray]], None]

ENCODE_CASES: list[tuple[str, Case, str]] = [
    ("3 data", lambda c, d, p: c.encode(d[:3], p), r"data has 3 buffers; expected 4"),
    ("1 parity", lambda c, d, p: c.encode(d, p[:1]), r"parity has 1 buffers; expected 2"),
    ("bare buffer", lambda c, d, p: c.encode(d[0], p), r"data must be a sequence of 4 buffers"),
    ("short data", lambda c, d, p: c.encode([*d[:3], d[3][:-1]], p), r"data\[3\] has 63 bytes"),
    ("short parity", lambda c, d, p: c.encode(d, [p[0], p[1][:9]]), r"parity\[1\] has 9 bytes"),
    (
        "float dtype",
        lambda c, d, p: c.encode([*d[:3], np.zeros(16, np.float32)], p),
        r"data\[3\] is a numpy array of dtype float32; expected uint8",
    ),
    (
        "int dtype out",
        lambda c, d, p: c.encode(d, [p[0], np.zeros(L, np.int8)]),
        r"parity\[1\].*dtype int8",
    ),
    (
        "strided",
        lambda c, d, p: c.encode([np.zeros(2 * L, np.uint8)[::2], *d[1:]], p),
        r"data\[0\] is not C-contiguous",
    ),
    (
        "bytes out",
        lambda c, d, p: c.encode(d, [p[0], bytes(L)]),
        r"parity\[1\] is read-only \(bytes\); outputs must be writable",
    ),
    (
        "read-only array out",
        lambda c, d, p: c.encode(d, [p[0], np.frombuffer(bytes(L), np.uint8)]),
        r"parity\[1\] is a read-only array",
    ),
    (
        "read-only memoryview out",
        lambda c, d, p: c.encode(d, [memoryview(bytes(L)), p[1]]),
        r"parity\[0\] is read-only",
    ),
    (
        "wide memoryview",
        lambda c, d, p: c.encode(d, [memoryview(bytearray(L)).cast("i"), p[1]]),
        r"parity\[0\] is a memoryview of format 'i'.*cast\('B'\)",
    ),
    ("not a buffer", lambda c, d, p: c.encode([*d[:3], [0] * L], p), r"data\[3\] is a list"),
    ("str", lambda c, d, p: c.encode([*d[:3], "x" * L], p), r"data\[3\] is a str"),
    ("None", lambda c, d, p: c.encode([*d[:3], None], p), r"data\[3\] is a NoneType"),
    ("out is in", lambda c, d, p: c.encode(d, [p[0], d[2]]), r"parity\[1\] overlaps data\[2\]"),
    ("out twice", lambda c, d, p: c.encode(d, [p[0], p[0]]), r"parity\[0\] overlaps parity\[1\]"),
    (
        "shifted overlap",
        lambda c, d, p: c.encode([p[0][1:], *(x[1:] for x in d[1:])], [p[0][:-1], p[1][1:]]),
        r"parity\[0\] overlaps data\[0\]",
    ),
    ("i too big", lambda c, d, p: c.partial_parity(4, d[0], p), r"data shard index i = 4.*< 4"),
    ("i negative", lambda c, d, p: c.partial_parity(-1, d[0], p), r"i = -1 is out of range"),
    ("i bool", lambda c, d, p: c.partial_parity(True, d[0], p), r"must be an int, got bool"),
    ("partial 3 parity", lambda c, d, p: c.partial_parity(0, d[0], [*p, p[0]]), r"expected 2"),
    ("partial len", lambda c, d, p: c.partial_parity(1, d[0][:5], p), r"data\[1\] has 5"),
    (
        "partial overlap",
        lambda c, d, p: c.partial_parity(1, p[1], p),
        r"parity\[1\] overlaps data\[1\]",
    ),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "case, message", [(c, m) for _, c, m in ENCODE_CASES], ids=[name for name, _, _ in ENCODE_CASES]
)
def test_bad_encode_arguments(codec: Codec, case: Case, message: str) -> None:
    data, parity = fresh(4), fresh(2)
    before = [p.copy() for p in parity]
    with pytest.raises(CodecError, match=message):
        case(codec, data, parity)
    assert all(np.array_equal(a, b) for a, b in zip(parity, before, strict=True))  # untouched


DecodeCase = Callable[[Any, dict[Any, Any], list[np.ndarray]], None]

DECODE_CASES: list[tuple[str, DecodeCase, str]] = [
    (
        "too few",
        lambda c, s, o: c.decode({0: s[0], 1: s[1], 5: s[5]}, [2], o[:1]),
        r"only 3 shards survive \(\[0, 1, 5\]\); rebuilding needs at least k=4 of the 6",
    ),
    ("lost range", lambda c, s, o: c.decode(s, [6], o[:1]), r"lost\[0\] = 6 is out of range"),
    ("lost negative", lambda c, s, o: c.decode(s, [-1], o[:1]), r"lost\[0\] = -1"),
    ("lost dup", lambda c, s, o: c.decode(s, [2, 2], o), r"lost has duplicate indices: \[2, 2\]"),
    ("lost present", lambda c, s, o: c.decode(s, [0], o[:1]), r"lost shards \[0\] are also given"),
    ("lost type", lambda c, s, o: c.decode(s, 2, o[:1]), r"lost must be a sequence"),
    ("lost str", lambda c, s, o: c.decode(s, ["2"], o[:1]), r"lost\[0\] must be an int, got str"),
    ("out count", lambda c, s, o: c.decode(s, [2, 3], o[:1]), r"out has 1 buffers; expected 2"),
    ("out short", lambda c, s, o: c.decode(s, [2, 3], [o[0], o[1][:3]]), r"has 3 bytes"),
    ("out ro", lambda c, s, o: c.decode(s, [2], [bytes(L)]), r"out\[0\] is read-only"),
    ("not mapping", lambda c, s, o: c.decode(list(s.values()), [2], o[:1]), r"must be a mapping"),
    ("shard range", lambda c, s, o: c.decode({**s, 9: s[0]}, [2], o[:1]), r"shard index = 9"),
    ("shard key", lambda c, s, o: c.decode({**s, "x": s[0]}, [2], o[:1]), r"must be an int"),
    (
        "extra survivor short",
        lambda c, s, o: c.decode({**s, 1: s[1][:7]}, [2], o[:1]),
        r"shard 1 has 7 bytes",
    ),
    (
        "survivor dtype",
        lambda c, s, o: c.decode({**s, 4: s[4].view(np.int8)}, [2], o[:1]),
        r"shard 4 .*dtype int8",
    ),
    (
        "out is a survivor",
        lambda c, s, o: c.decode(s, [2], [s[5]]),
        r"out\[0\] \(shard 2\) overlaps shard 5",
    ),
    (
        "partial not a survivor",
        lambda c, s, o: c.partial_decode([0, 1, 4, 5], [2, 3], 3, s[0], o),
        r"lost shards \[3\] are also given|shard 3 is not one of the survivors",
    ),
    (
        "partial survivor count",
        lambda c, s, o: c.partial_decode([0, 1, 4], [2], 0, s[0], o[:1]),
        r"survivors lists 3 shards; expected exactly k=4",
    ),
    (
        "partial survivor dup",
        lambda c, s, o: c.partial_decode([0, 0, 1, 4], [2], 0, s[0], o[:1]),
        r"survivors has duplicate indices",
    ),
    (
        "partial index",
        lambda c, s, o: c.partial_decode([0, 1, 4, 5], [2], 3, s[0], o[:1]),
        r"shard 3 is not one of the survivors \[0, 1, 4, 5\]",
    ),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "case, message", [(c, m) for _, c, m in DECODE_CASES], ids=[name for name, _, _ in DECODE_CASES]
)
def test_bad_decode_arguments(codec: Codec, case: DecodeCase, message: str) -> None:
    data = fresh(4)
    parity = fresh(2)
    codec.encode(data, parity)
    every = [*data, *parity]
    survivors = {i: every[i] for i in (0, 1, 4, 5)}
    out = fresh(2)
    with pytest.raises(CodecError, match=message):
        case(codec, survivors, out)
    assert all((o == 0x77).all() for o in out)  # untouched


def test_empty_requests_are_fine(codec: Codec) -> None:
    data, parity = fresh(4, 0), fresh(2, 0)
    codec.encode(data, parity)
    codec.decode({i: s for i, s in enumerate([*data, *parity]) if i != 1}, [1], fresh(1, 0))
    codec.decode({i: s for i, s in enumerate(fresh(4))}, [], [])  # nothing lost: nothing to do
