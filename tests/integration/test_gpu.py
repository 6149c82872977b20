"""GPU paths: registered arena, device-to-host copies on a side stream, restore onto the GPU.

Skipped where no CUDA device is present.
"""

from __future__ import annotations

import pytest
import torch

import ecsnap
from ecsnap.testing import LocalSMP

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)
    ).cuda()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _step(model: torch.nn.Module, optim: torch.optim.Optimizer) -> None:
    model(torch.randn(64, 256, device="cuda")).square().mean().backward()
    optim.step()
    optim.zero_grad()


def test_cuda_state_saves_on_side_stream_and_restores_on_gpu(smp_node: LocalSMP) -> None:
    torch.manual_seed(0)
    model, optim = _model()
    _step(model, optim)
    state = {"model": model, "optim": optim, "rng": ecsnap.RNGState()}
    with ecsnap.Snapshotter(job_id="gpu", socket=smp_node.socket) as snap:
        expected = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        exp_opt = {
            i: {k: v.cpu().clone() for k, v in s.items() if torch.is_tensor(v)}
            for i, s in optim.state_dict()["state"].items()
        }
        handle = snap.save(1, state)
        # The next optimizer step is queued at once: its pre-hook orders it after the copy on
        # the GPU instead of blocking, so the snapshot must still hold the pre-step values.
        _step(model, optim)
        handle.wait_protected(timeout=60)
        assert any(a._registered for a in snap._arenas.values()), "arena not cudaHostRegistered"

    torch.manual_seed(1)
    fresh, fresh_opt = _model()
    _step(fresh, fresh_opt)  # optimizer state exists on the GPU: restored in place
    target = {"model": fresh, "optim": fresh_opt, "rng": ecsnap.RNGState()}
    param_ids = [id(p) for p in fresh.parameters()]
    with ecsnap.Snapshotter(job_id="gpu", socket=smp_node.socket) as snap:
        assert snap.restore(target) == 1
    assert [id(p) for p in fresh.parameters()] == param_ids
    for key, value in fresh.state_dict().items():
        assert value.is_cuda and torch.equal(value.cpu(), expected[key]), key
    for i, s in fresh_opt.state_dict()["state"].items():
        for k, v in exp_opt[i].items():
            assert s[k].device == (v.device if k == "step" else s[k].device)
            assert torch.equal(s[k].cpu(), v), (i, k)
