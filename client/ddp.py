"""DDP's gradient buckets, settled before the first step so a resumed job sums as the first did.

DistributedDataParallel rebuilds its gradient buckets after the first backward of every process
(in the order the gradients became ready). The bucket layout decides the order in which gloo and
NCCL add up the ranks' gradients, and with more than two ranks that order changes the last bits
of the sum. A job that never stopped trains its first step with the initial buckets and every
later one with the rebuilt buckets; a job resumed at step N would train step N with the initial
ones, so its parameters drift from the uninterrupted run's by ~1e-8 and its losses diverge.

`settle_ddp(ddp_model, sample_input)` runs one throwaway forward and backward (loss = 0 * the
outputs' sum, so every gradient is zero) right after the DDP wrapper is built, in every run:
the buckets are rebuilt before the first real step, the same way whether the job starts fresh or
resumes. It changes no training state: the random generators and the module's buffers are put
back as they were and the gradients are cleared.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ecsnap.loader import tensors_in
from ecsnap.rng import RNGState


def settle_ddp(ddp: nn.Module, *inputs: Any, **kwargs: Any) -> None:
    """Collective (every rank calls it, once, before training): one throwaway forward of `ddp`
    on `inputs` (any batch of the right shape: zeros will do) and a backward of zero, so that
    DDP's gradient buckets take their final layout now. Training state is left as it was."""
    if not isinstance(ddp, nn.parallel.DistributedDataParallel):
        raise TypeError(
            f"settle_ddp needs the DistributedDataParallel wrapper, got {type(ddp).__name__}: "
            "pass the module returned by DistributedDataParallel(model)"
        )
    rng = RNGState()
    saved_rng = rng.state_dict()
    buffers = [(b, b.detach().clone()) for b in ddp.module.buffers()]
    outputs = ddp(*inputs, **kwargs)
    found = [t for t in tensors_in(outputs) if t.is_floating_point() and t.requires_grad]
    if not found:
        raise ValueError(
            "settle_ddp: the module's output holds no floating-point tensor that requires grad; "
            "pass inputs for which forward returns one (e.g. the loss or the logits)"
        )
    # Touch every output so that every parameter that would get a gradient gets one (of zero).
    total = sum(t.sum() for t in found)
    assert isinstance(total, torch.Tensor)  # a sum of at least one tensor
    total.mul(0).backward()
    ddp.module.zero_grad(set_to_none=True)
    with torch.no_grad():
        for live, before in buffers:
            live.copy_(before)
    rng.load_state_dict(saved_rng)
