"""Canonical parameter names (FQNs), as torch.distributed.checkpoint.state_dict spells them.

An optimizer's state_dict() keys its state by parameter index; DCP's optimizer state dict keys it
by the parameter's fully qualified name in its model, without wrapper prefixes (DDP's "module.",
torch.compile's "_orig_mod.", activation checkpointing's "_checkpoint_wrapped_module.", FSDP1's
"_fsdp_wrapped_module."). The snapshot records the name of every parameter index at save time,
so an export can write the FQN-keyed form without the live model.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence

import torch
from torch import nn

_WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"})


def is_ddp(module: nn.Module) -> bool:
    return isinstance(module, nn.parallel.DistributedDataParallel)


def canonical(name: str, ddp: bool) -> str:
    parts = name.split(".")
    if ddp and parts[:1] == ["module"]:
        parts = parts[1:]
    return ".".join(p for p in parts if p not in _WRAPPER_SEGMENTS)


def _optimizer_params(optim: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optim.param_groups for p in group["params"]]


_Entry = tuple[tuple[int, ...], list[str]]  # (ids of the optimizer's parameters, their FQNs)


class ParamNames:
    """Index -> canonical FQN of every optimizer parameter, cached while the parameters stay."""

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[
            torch.optim.Optimizer, tuple[tuple[int, ...], list[str]]
        ]
        self._cache = weakref.WeakKeyDictionary()

    def of(self, optim: torch.optim.Optimizer, modules: Sequence[nn.Module]) -> list[str]:
        params = _optimizer_params(optim)
        ids = tuple(id(p) for p in params)
        hit = self._cache.get(optim)
        if hit is not None and hit[0] == ids:
            return hit[1]
        names = _names_by_id(modules)
        fqns = [names.get(id(p), "") for p in params]
        self._cache[optim] = (ids, fqns)
        return fqns


def _names_by_id(modules: Iterable[nn.Module]) -> dict[int, str]:
    names: dict[int, str] = {}
    for module in modules:
        ddp = is_ddp(module)
        for name, p in module.named_parameters():
            names.setdefault(id(p), canonical(name, ddp))
    return names
