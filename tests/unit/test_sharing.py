"""Storage is saved once and comes back shared; restores check everything before writing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from ecsnap.errors import RestoreError
from ecsnap.fences import fenced_storages, owners
from ecsnap.flatten import flatten
from ecsnap.loader import load_into
from ecsnap.saved import saved_tensors
from tests.unit.test_flatten import into_arena, read_back


def test_a_tensor_under_three_keys_is_stored_once_and_restored_as_one() -> None:
    t = torch.randn(1 << 20)  # 4 MiB
    flat = flatten({"a": t, "b": t, "c": {"again": t}})
    assert flat.nbytes == 4 << 20 and len(flat.manifest.spans) == 1
    fresh: dict[str, Any] = {}
    load_into(fresh, read_back({"a": t, "b": t, "c": {"again": t}}))
    assert fresh["a"] is fresh["b"] is fresh["c"]["again"]
    assert torch.equal(fresh["a"], t)


def test_views_come_back_as_views_of_one_base() -> None:
    base = torch.arange(24.0).view(4, 6)
    state = {"base": base, "row": base[1], "col": base[:, 2], "t": base.t()}
    flat = flatten(state)
    assert len(flat.manifest.spans) == 1 and flat.nbytes == 128  # 96 bytes, aligned to 64
    fresh: dict[str, Any] = {}
    load_into(fresh, read_back(state))
    for key in state:
        assert torch.equal(fresh[key], state[key]), key
        assert fresh[key].untyped_storage().data_ptr() == fresh["base"].untyped_storage().data_ptr()
    fresh["base"][1, 0] = -1.0
    assert fresh["row"][0] == -1.0 and fresh["t"][0, 1] == -1.0


def test_only_the_viewed_part_of_a_storage_is_stored() -> None:
    big = torch.zeros(1 << 20)
    flat = flatten({"slice": big[1000:1016]})
    assert flat.nbytes == 64  # 16 floats: the span starts at byte 4000, a multiple of 16


def test_parameters_and_requires_grad_survive_a_fresh_restore() -> None:
    p = nn.Parameter(torch.randn(3))
    frozen = nn.Parameter(torch.randn(2), requires_grad=False)
    leaf = torch.randn(2, requires_grad=True)
    fresh: dict[str, Any] = {}
    load_into(fresh, read_back({"p": p, "frozen": frozen, "leaf": leaf, "plain": torch.ones(1)}))
    assert isinstance(fresh["p"], nn.Parameter) and fresh["p"].requires_grad
    assert isinstance(fresh["frozen"], nn.Parameter) and not fresh["frozen"].requires_grad
    assert not isinstance(fresh["leaf"], nn.Parameter) and fresh["leaf"].requires_grad
    assert not fresh["plain"].requires_grad
    assert torch.equal(fresh["p"], p)


def test_tied_weights_share_storage_after_a_fresh_restore() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    state = {"weights": {"emb": emb.weight, "head": head.weight}}
    assert flatten(state).nbytes == 192  # 160 bytes once, not twice
    fresh: dict[str, Any] = {}
    load_into(fresh, read_back(state))
    assert fresh["weights"]["emb"] is fresh["weights"]["head"]


def test_a_failing_restore_writes_nothing() -> None:
    model = nn.Linear(4, 3)
    saved = read_back({"model": model, "x": torch.ones(3)})
    live_model = nn.Linear(4, 5)  # another shape: the module would refuse
    before = {k: v.clone() for k, v in live_model.state_dict().items()}
    x = torch.zeros(3)
    with pytest.raises(RestoreError, match=r"model/weight: saved torch.float32\[3, 4\]"):
        load_into({"model": live_model, "x": x}, saved)
    assert torch.equal(x, torch.zeros(3))  # the plain entry before it was not written either
    for k, v in live_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_an_expanded_buffer_is_refused_before_anything_is_written() -> None:
    module = nn.Module()
    module.register_buffer("b", torch.zeros(1).expand(4))
    saved = read_back({"m": module, "x": torch.ones(2)})
    x = torch.zeros(2)
    with pytest.raises(RestoreError, match="m/b: it cannot be written in place"):
        load_into({"m": module, "x": x}, saved)
    assert torch.equal(x, torch.zeros(2))


def test_an_expanded_plain_value_is_replaced_by_a_fresh_tensor() -> None:
    live = {"e": torch.zeros(1).expand(4)}
    load_into(live, read_back({"e": torch.arange(4.0)}))
    assert torch.equal(live["e"], torch.arange(4.0))


def test_a_damaged_manifest_never_reads_outside_the_snapshot() -> None:
    flat = flatten({"x": torch.ones(4)})
    flat.manifest.tensors[0].span_offset = 10
    with pytest.raises(ValueError, match="outside its span"):
        saved_tensors(flat.manifest, into_arena(flat))


def test_tensor_subclasses_are_clear_errors() -> None:
    class Wrapped(torch.Tensor):
        @classmethod
        def __torch_dispatch__(
            cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            return func(*args, **(kwargs or {}))

    t = torch.Tensor._make_subclass(Wrapped, torch.ones(2))
    with pytest.raises(TypeError, match="extra/w: ecsnap cannot save a Wrapped"):
        flatten({"extra": {"w": t}})


def test_fenced_storages_are_those_of_optimizers_and_frozen_or_buffer_tensors() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    model[2].weight.requires_grad_(False)
    optim = torch.optim.SGD(model[0].parameters(), lr=0.1)

    class Wrapper:  # DCP's AppState shape: a Stateful holding model and optimizer
        def __init__(self) -> None:
            self.model, self.optim = model, optim

        def state_dict(self) -> dict[str, Any]:
            return {"model": self.model.state_dict()}

        def load_state_dict(self, sd: dict[str, Any]) -> None: ...

    modules, optimizers = owners({"app": Wrapper(), "loose": torch.ones(1)})
    assert modules == [model] and optimizers == [optim]
    flat = flatten(
        {"app": Wrapper(), "ema": {"w": torch.ones(3)}}, fenced_storages(modules, optimizers)
    )
    background = [flat.spans[e.span].background for e in flat.manifest.tensors]
    names = [*model.state_dict(), "ema"]
    expected = {
        "0.weight": True,  # stepped by the optimizer: fenced
        "0.bias": True,
        "1.weight": False,  # trainable, but no optimizer ecsnap knows steps it
        "1.bias": False,
        "1.running_mean": True,  # buffers: fenced by the forward pre-hook
        "1.running_var": True,
        "1.num_batches_tracked": True,
        "2.weight": True,  # frozen
        "2.bias": False,
        "ema": False,  # nobody's: copied before save() returns
    }
    assert dict(zip(names, background, strict=True)) == expected


def test_a_live_parameter_of_another_shape_is_refused_not_replaced() -> None:
    live = {"p": nn.Parameter(torch.zeros(4))}
    before = live["p"]
    with pytest.raises(RestoreError, match=r"p: saved torch.float32\[3\], live torch.float32\[4\]"):
        load_into(live, read_back({"p": nn.Parameter(torch.ones(3))}))
    assert live["p"] is before
