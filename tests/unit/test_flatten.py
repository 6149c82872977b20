"""Manifest/skeleton round trips through a real byte arena (no SMP involved)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Any

import pytest
import torch

from ecsnap.errors import RestoreError
from ecsnap.flatten import FlatState, flatten
from ecsnap.loader import load_into
from ecsnap.safepickle import safe_globals
from ecsnap.saved import saved_tensors, unflatten
from smp.defaults import TENSOR_ALIGN

Pair = namedtuple("Pair", "a b")


def into_arena(flat: FlatState) -> torch.Tensor:
    arena = torch.zeros(max(flat.nbytes, 1), dtype=torch.uint8)
    for span in flat.spans:
        arena[span.offset : span.offset + span.nbytes].copy_(span.source())
    return arena


def roundtrip(state: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Saved and read back; every tensor resolved as a fresh restore (empty live state) would."""
    flat = flatten(state)
    tree = unflatten(flat.manifest, saved_tensors(flat.manifest, into_arena(flat)))
    fresh: dict[str, Any] = {}
    load_into(fresh, {k: ("plain", v) for k, (_, v) in tree.items()})
    return {k: (kind, fresh[k]) for k, (kind, _) in tree.items()}


DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.complex64,
    torch.float8_e4m3fn,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_roundtrip_bitwise(dtype: torch.dtype) -> None:
    src = (
        torch.randn(7, 5, dtype=torch.float32).to(dtype)
        if dtype != torch.bool
        else (torch.rand(7, 5) > 0.5)
    )
    tree = roundtrip({"t": src})
    out = tree["t"][1]
    assert out.dtype == dtype and out.shape == src.shape
    assert torch.equal(out.view(torch.uint8), src.view(torch.uint8))


def test_shapes_views_and_containers() -> None:
    base = torch.arange(24.0).view(4, 6)
    state = {
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 3),
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "nested": OrderedDict(a=[torch.ones(2), (torch.zeros(1), 7)], b={"c": "text"}),
        "pair": Pair(torch.full((2,), 2.0), None),
        "number": 12,
    }
    with safe_globals(Pair):  # a user type: restore unpickles it only when allowed
        tree = roundtrip(state)
    for key in ("scalar", "empty", "transposed", "strided"):
        assert torch.equal(tree[key][1], state[key]), key
    nested = tree["nested"][1]
    assert isinstance(nested, OrderedDict) and nested["b"] == {"c": "text"}
    assert torch.equal(nested["a"][0], torch.ones(2)) and nested["a"][1][1] == 7
    assert isinstance(tree["pair"][1], Pair) and tree["pair"][1].b is None
    assert tree["number"] == ("plain", 12)


def test_spans_are_aligned_and_disjoint() -> None:
    flat = flatten({"x": [torch.ones(3, dtype=torch.int8), torch.ones(5), torch.ones(1)]})
    offsets = [s.offset for s in flat.manifest.spans]
    assert len(offsets) == 3 and all(o % TENSOR_ALIGN == 0 for o in offsets)
    ends = [s.offset + s.nbytes for s in flat.manifest.spans]
    assert all(end <= nxt for end, nxt in zip(ends, offsets[1:], strict=False))
    assert flat.nbytes >= ends[-1]


def read_back(state: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The saved tree with tensors as `Saved` views of an arena (for load_into)."""
    flat = flatten(state)
    return unflatten(flat.manifest, saved_tensors(flat.manifest, into_arena(flat)))


def test_stateful_values_go_through_state_dict() -> None:
    model = torch.nn.Linear(4, 3)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    tree = read_back({"model": model})
    kind, _ = tree["model"]
    assert kind == "stateful"
    with torch.no_grad():
        model.weight.zero_()
    weight_before = model.weight
    load_into({"model": model}, tree)
    assert model.weight is weight_before  # loaded in place
    assert torch.equal(model.weight, saved["weight"])


def test_in_place_and_fresh_copies() -> None:
    live = {"same": torch.zeros(3), "other": torch.zeros(4)}
    same = live["same"]
    load_into(live, read_back({"same": torch.arange(3.0), "other": torch.arange(3.0)}))
    assert live["same"] is same and torch.equal(same, torch.arange(3.0))
    # Shape differs: a new tensor, and never a view of the arena.
    assert torch.equal(live["other"], torch.arange(3.0)) and live["other"] is not same


def test_unsupported_values_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="dense tensors"):
        flatten({"s": torch.eye(3).to_sparse()})
    with pytest.raises(TypeError, match="keys must be strings"):
        flatten({1: torch.ones(1)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="cannot be saved"):
        flatten({"f": lambda: 0})


def test_restore_into_app_state_missing_stateful_key() -> None:
    tree = read_back({"model": torch.nn.Linear(2, 2)})
    with pytest.raises(RestoreError, match="model"):
        load_into({}, tree)
