"""A committed step holds exactly the values of its save() call, however the state is wrapped, or
it is not committed and the next call names the tensor that changed.

Real SMP process; the trainer is this test process. The state changes right after save()
returns, while the background copy may still run; the snapshot read back afterwards must hold
the values of the save() call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

import ecsnap
from ecsnap.testing import LocalSMP

pytestmark = pytest.mark.timeout(120)

BIG = 16 << 20  # float32 elements: 64 MiB, so a background copy takes a while


@contextmanager
def copy_held(snap: ecsnap.Snapshotter) -> Iterator[None]:
    """The background copy of the save made inside waits until the block is done, so a change
    made there lands mid-copy. Left alone on a loaded machine the copy may finish first, and a
    step copied before the change is rightly committed."""
    gate = threading.Event()
    snap._copier._executor.submit(gate.wait, 60)  # the copy thread runs one task at a time
    try:
        yield
    finally:
        gate.set()


def restored(node: LocalSMP, job: str, like: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    with ecsnap.Snapshotter(job_id=job, socket=node.socket) as snap:
        step = snap.restore(like)
    return step, like


def test_an_unfenced_tensor_changed_after_save_is_saved_as_it_was(smp_node: LocalSMP) -> None:
    big = torch.ones(BIG)
    with ecsnap.Snapshotter(job_id="plain", socket=smp_node.socket) as snap:
        h = snap.save(0, {"extra": {"big": big}})
        big.fill_(2.0)  # nobody fences a plain dict: it was copied before save() returned
        h.wait_protected(timeout=60)
    step, state = restored(smp_node, "plain", {"extra": {"big": torch.zeros(BIG)}})
    assert step == 0 and bool((state["extra"]["big"] == 1.0).all())


class AppState:
    """DCP's tutorial wrapper: one Stateful holding the model and the optimizer."""

    def __init__(self, model: nn.Module, optim: torch.optim.Optimizer) -> None:
        self.model, self.optim = model, optim

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(2048, 2048)  # 16 MiB of weights
    optim = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(4, 2048)).sum().backward()
    return model, optim


def test_a_wrapped_optimizer_is_fenced(smp_node: LocalSMP) -> None:
    for trial in range(3):
        model, optim = _model()
        before = model.weight.detach().clone()
        with ecsnap.Snapshotter(job_id=f"wrapped{trial}", socket=smp_node.socket) as snap:
            h = snap.save(0, {"app": AppState(model, optim)})
            optim.step()  # right away: the step pre-hook found inside the wrapper waits
            h.wait_protected(timeout=60)
        assert not torch.equal(model.weight, before)
        fresh, fresh_optim = _model()
        step, _ = restored(smp_node, f"wrapped{trial}", {"app": AppState(fresh, fresh_optim)})
        assert step == 0 and torch.equal(fresh.weight, before), trial


def _fenced_state() -> tuple[dict[str, Any], nn.Parameter, torch.optim.Optimizer]:
    big = nn.Parameter(torch.zeros(BIG))  # keeps the background copy busy
    small = nn.Parameter(torch.zeros(16))
    optim = torch.optim.SGD([big, small], lr=0.1)
    return {"params": {"big": big, "small": small}, "optim": optim}, small, optim


def test_a_parameter_changed_by_hand_mid_copy_is_never_committed(smp_node: LocalSMP) -> None:
    state, small, _ = _fenced_state()
    with ecsnap.Snapshotter(job_id="byhand", socket=smp_node.socket) as snap:
        snap.save(0, state).wait_protected(timeout=60)
        with copy_held(snap):
            h = snap.save(1, state)
            with torch.no_grad():
                small.add_(1.0)  # not through optimizer.step(): no fence waits
        with pytest.raises(ecsnap.SnapshotError, match="changed in place") as info:
            h.wait_protected(timeout=60)
        message = str(info.value.__cause__ or info.value)
        assert "params/small" in message and "optimizer.step()" in message, message
        with pytest.raises(ecsnap.SnapshotError, match="params/small changed in place"):
            snap.save(2, state)  # and the next call says so
    step, _ = restored(smp_node, "byhand", _fenced_state()[0])
    assert step == 0  # step 1 never committed


def test_a_buffer_changed_outside_forward_is_never_committed(smp_node: LocalSMP) -> None:
    model = nn.Sequential(nn.Linear(4096, 4096), nn.BatchNorm1d(4096))
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"model": model, "optim": optim}
    with ecsnap.Snapshotter(job_id="buffer", socket=smp_node.socket) as snap:
        snap.save(0, state).wait_protected(timeout=60)
        model(torch.randn(8, 4096))  # forward waits for nothing: no save in flight
        h = snap.save(1, state)
        model(torch.randn(8, 4096))  # the forward pre-hook waits for the copy: fine
        h.wait_protected(timeout=60)
        with copy_held(snap):
            h = snap.save(2, state)
            model[1].running_mean.add_(1.0)  # outside forward: nobody waits
        with pytest.raises(ecsnap.SnapshotError, match=r"model/1\.running_mean"):
            h.wait_protected(timeout=60)
