"""Load a restored tree into the live app state: everything checked first, then written.

Two phases, so a restore that cannot succeed leaves the live state untouched:
1. plan: every saved tensor is matched with the live tensor it replaces (same shape and dtype,
   writable in place; for a DTensor the same global tensor, placements and mesh) or materialized
   as a fresh tensor; every mismatch a module's `load_state_dict` would refuse, and every saved
   DTensor that cannot be placed, is collected. Any problem raises `RestoreError` naming the
   entries, before a single byte of live state changed.
2. apply: the planned copies into live tensors, then `load_state_dict` of Stateful values and the
   assignment of plain ones; stateful data loaders get their iterators, and RNGState entries are
   loaded last (see `_ordered`).

In place matters: an optimizer holds references to its parameters, FSDP2 to its sharded
parameters' storage. Fresh tensors never alias the arena (the next saves overwrite it); tensors
that shared storage when saved share it again, and an `nn.Parameter` comes back as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Protocol, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from ecsnap import dtensors
from ecsnap.errors import RestoreError
from ecsnap.fences import owners
from ecsnap.flatten import STATEFUL, is_stateful
from ecsnap.rng import RNGState
from ecsnap.saved import Saved

_SHOWN = 8  # problems listed in one error
T = TypeVar("T")


def _writable(t: torch.Tensor) -> bool:
    """Can `t` take a copy in place? (not an inference tensor, no element aliasing another)"""
    local = dtensors.local_of(t) if dtensors.is_dtensor(t) else t
    return not local.is_inference() and torch._debug_has_internal_overlap(local) == 0


def instances_in(value: Any, cls: type[T]) -> Iterator[T]:
    """Every `cls` in a value: itself, or inside nested mappings, lists and tuples."""
    if isinstance(value, cls):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from instances_in(v, cls)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from instances_in(v, cls)


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a value: itself, or inside nested mappings, lists and tuples."""
    return instances_in(value, torch.Tensor)


class Reshard(Protocol):
    """Fills a live DTensor laid out differently from the saved one (see `topology`)."""

    def fill(
        self, path: str, saved: Saved, live: Any
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]: ...


class _Plan:
    """Phase 1: resolve every `Saved` of the tree against the live state."""

    def __init__(self, app_state: Mapping[str, Any], reshard: Reshard | None = None) -> None:
        self.app_state = app_state
        self.reshard = reshard
        self.copies: list[tuple[torch.Tensor, torch.Tensor]] = []  # (live destination, source)
        self.problems: list[str] = []
        self._fresh: dict[int, torch.Tensor] = {}  # saved entry -> its fresh tensor
        self._spans: dict[tuple[int, str], torch.Tensor] = {}  # (span, device) -> fresh bytes
        self._meshes: dtensors.Meshes | None = None
        self._live_trees: list[Any] = []

    # -- fresh tensors --------------------------------------------------------------------------

    def _fresh_local(self, saved: Saved, device: torch.device) -> torch.Tensor:
        """A copy of the saved tensor on `device`, sharing a fresh copy of its span with the other
        fresh tensors of that span (so tensors that shared storage share it again)."""
        key = (saved.span, str(device))
        data = self._spans.get(key)
        if data is None:
            data = self._spans[key] = saved.span_bytes.to(device=device, copy=True)
        return saved.view_of(data)

    def fresh(self, saved: Saved, device: torch.device, path: str) -> torch.Tensor | None:
        found = self._fresh.get(saved.index)
        if found is not None:
            return found
        t: torch.Tensor
        if saved.is_dtensor:
            meta = saved.entry.dtensor
            mesh = self.meshes().find(meta)
            if mesh is None:
                self.problems.append(
                    f"{path}: saved as a DTensor ({dtensors.layout_text(meta)}), but no live "
                    "DTensor of the app state uses that device mesh: restore after the model "
                    "is sharded (fully_shard / parallelize_module) with the same mesh"
                )
                return None
            local = self._fresh_local(saved, torch.device(mesh.device_type))
            t = dtensors.rebuild(local, meta, mesh)
        else:
            t = self._fresh_local(saved, device)
        if saved.entry.parameter:
            t = nn.Parameter(t, requires_grad=saved.entry.requires_grad)
        elif saved.entry.requires_grad and (t.is_floating_point() or t.is_complex()):
            t.requires_grad_(True)
        self._fresh[saved.index] = t
        return t

    def meshes(self) -> dtensors.Meshes:
        if self._meshes is None:
            self._meshes = dtensors.Meshes()
            modules, optimizers = owners(self.app_state)
            for module in modules:
                self._meshes.add_from(module.parameters())
                self._meshes.add_from(module.buffers())
            for optim in optimizers:
                for group in optim.param_groups:
                    self._meshes.add_from(group["params"])
            for tree in self._live_trees:
                self._meshes.add_from(tensors_in(tree))
        return self._meshes

    # -- matching -------------------------------------------------------------------------------

    def tensor(self, current: Any, saved: Saved, path: str, strict: bool) -> Any:
        if saved.is_dtensor:
            return self._dtensor(current, saved, path)
        if dtensors.is_dtensor(current):
            self.problems.append(
                f"{path}: saved as a plain tensor {list(saved.view.shape)}, but the live one is a "
                "DTensor: restore into the model as it was sharded when saving"
            )
            return current
        if isinstance(current, torch.Tensor):
            same = current.shape == saved.view.shape and current.dtype == saved.view.dtype
            if same and _writable(current):
                self.copies.append((current, saved.view))
                return current
            # A live parameter is referenced by its optimizer and module: replacing it with a
            # fresh tensor would silently train something else.
            if strict or isinstance(current, nn.Parameter):
                why = (
                    "it cannot be written in place (an expanded or inference tensor)"
                    if same
                    else f"saved {saved.view.dtype}{list(saved.view.shape)}, live "
                    f"{current.dtype}{list(current.shape)}"
                )
                self.problems.append(f"{path}: {why}")
                return current
            return self.fresh(saved, current.device, path)
        return self.fresh(saved, torch.device("cpu"), path)

    def _dtensor(self, current: Any, saved: Saved, path: str) -> Any:
        meta = saved.entry.dtensor
        if not dtensors.is_dtensor(current):
            if isinstance(current, torch.Tensor):
                self.problems.append(
                    f"{path}: saved as a DTensor ({dtensors.layout_text(meta)}), but the live "
                    "one is a plain tensor: restore into the model sharded as when saving"
                )
                return current
            return self.fresh(saved, torch.device("cpu"), path)
        local = dtensors.local_of(current)
        if not dtensors.same_layout(meta, current) and self.reshard is not None:
            copies, problem = self.reshard.fill(path, saved, current)
            if problem:
                self.problems.append(problem)
            self.copies.extend(copies)
        elif not dtensors.same_layout(meta, current):
            now = dtensors.describe(current)
            self.problems.append(
                f"{path}: saved with {dtensors.layout_text(meta)}, the live DTensor has "
                f"{dtensors.layout_text(now)}"
            )
        elif local.shape != saved.view.shape or local.dtype != saved.view.dtype:
            self.problems.append(
                f"{path}: saved local shard {saved.view.dtype}{list(saved.view.shape)}, live "
                f"{local.dtype}{list(local.shape)}"
            )
        elif not _writable(current):
            self.problems.append(f"{path}: the live DTensor's shard cannot be written in place")
        else:
            self.copies.append((local, saved.view))
        return current

    def merge(self, current: Any, loaded: Any, path: str, strict: bool = False) -> Any:
        """`loaded` with every `Saved` resolved (planned into `current` or materialized)."""
        if isinstance(loaded, Saved):
            return self.tensor(current, loaded, path, strict)
        if isinstance(loaded, dict):
            base = current if isinstance(current, Mapping) else {}
            for key in list(loaded):
                loaded[key] = self.merge(base.get(key), loaded[key], f"{path}/{key}", strict)
            return loaded
        if isinstance(loaded, list):
            same = isinstance(current, list) and len(current) == len(loaded)
            for i, item in enumerate(loaded):
                loaded[i] = self.merge(current[i] if same else None, item, f"{path}/{i}", strict)
            return loaded
        if isinstance(loaded, tuple):
            same = isinstance(current, tuple) and len(current) == len(loaded)
            items = [
                self.merge(current[i] if same else None, x, f"{path}/{i}", strict)
                for i, x in enumerate(loaded)
            ]
            return type(loaded)(*items) if hasattr(loaded, "_fields") else type(loaded)(items)
        if hasattr(loaded, "__dict__") and not isinstance(loaded, type):
            # An object of the user's with tensors among its attributes: they come back fresh.
            attrs = vars(loaded)
            for name, value in list(attrs.items()):
                attrs[name] = self.merge(None, value, f"{path}/{name}")
        return loaded

    def stateful(self, key: str, target: Any, value: Any) -> Any:
        live = target.state_dict()
        self._live_trees.append(live)
        if isinstance(target, nn.Module) and isinstance(value, Mapping):
            missing = sorted(set(live) - set(value))
            unexpected = sorted(set(value) - set(live))
            if missing or unexpected:
                self.problems.append(
                    f"{key}: the module's keys differ from the snapshot's (missing "
                    f"{_few(missing)}, unexpected {_few(unexpected)}): restore into the same "
                    "model"
                )
        if isinstance(target, torch.optim.Optimizer) and isinstance(value, Mapping):
            self._check_groups(key, target, value)
        return self.merge(live, value, key, strict=isinstance(target, nn.Module))

    def _check_groups(
        self, key: str, optim: torch.optim.Optimizer, value: Mapping[str, Any]
    ) -> None:
        saved = [len(g.get("params", ())) for g in value.get("param_groups", ())]
        live = [len(g["params"]) for g in optim.param_groups]
        if saved != live:
            self.problems.append(
                f"{key}: the optimizer's parameter groups hold {live} parameters, the snapshot's "
                f"{saved}: restore into an optimizer built over the same parameters"
            )


def _few(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:5]) or "none"
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class Prepared:
    """A restore that passed every check (phase 1); `apply()` writes it (phase 2)."""

    def __init__(
        self,
        app_state: MutableMapping[str, Any],
        plan: _Plan,
        resolved: list[tuple[str, str, Any, Any]],
    ) -> None:
        self._app_state = app_state
        self._plan = plan
        self._resolved = resolved

    def apply(self) -> None:
        # Nothing below can be refused for a reason the plan could have seen.
        cuda = False
        with torch.no_grad():
            for dst, src in self._plan.copies:
                cuda = cuda or dst.is_cuda
                dst.copy_(src, non_blocking=dst.is_cuda)
        rng = []
        for key, kind, target, value in self._resolved:
            if kind != STATEFUL:
                self._app_state[key] = value
            elif isinstance(target, RNGState):
                rng.append((key, target, value))  # last: see _ordered
            else:
                _load(key, target, value)
        _ordered(self._resolved, rng)
        if cuda:
            torch.cuda.synchronize()  # non_blocking host-to-device copies above


def _load(key: str, target: Any, value: Any) -> None:
    try:
        target.load_state_dict(value)
    except Exception as exc:  # a Stateful of the user's: its own rules
        raise RestoreError(
            f"app_state[{key!r}].load_state_dict() failed ({exc}); entries before it "
            "were already restored"
        ) from exc


def _ordered(
    resolved: list[tuple[str, str, Any, Any]], rng: list[tuple[str, RNGState, Any]]
) -> None:
    """Data loaders' iterators first, the random generators last.

    Creating a DataLoader's iterator draws from torch's global generator (its base seed). In the
    run that saved, the loader's iterator existed already (it was mid-epoch); a relaunch creates
    it after restore(), one draw later, and every dropout mask after it would differ. So every
    restored stateful DataLoader (torchdata's StatefulDataLoader) gets its iterator now, in its
    restored position (its `state_dict()` creates it, and the next `iter()` returns that one),
    and only then are the RNGState entries loaded: the next draw is the one the saved run made.
    """
    for _, kind, target, _ in resolved:
        if kind == STATEFUL and isinstance(target, DataLoader) and is_stateful(target):
            target.state_dict()  # type: ignore[attr-defined]  # a stateful loader's
    for key, target, value in rng:
        _load(key, target, value)


def prepare(
    app_state: MutableMapping[str, Any],
    tree: dict[str, tuple[str, Any]],
    reshard: Reshard | None = None,
) -> Prepared:
    """Phase 1: match the restored tree with `app_state`; RestoreError naming every entry that
    cannot be restored. Nothing live is written. `reshard` fills DTensors the live state lays
    out differently (a restore at another world size)."""
    plan = _Plan(app_state, reshard)
    resolved: list[tuple[str, str, Any, Any]] = []  # (key, kind, target, value)
    for key, (kind, value) in tree.items():
        target: Any = app_state.get(key)
        if kind != STATEFUL:
            resolved.append((key, kind, None, plan.merge(target, value, key)))
        elif key not in app_state:
            plan.problems.append(
                f"{key}: the snapshot has this Stateful entry but app_state lacks it: pass the "
                "same app_state keys as when saving"
            )
        elif not is_stateful(target):
            plan.problems.append(
                f"{key}: saved through state_dict(), but app_state[{key!r}] is now "
                f"{type(target).__name__}, which has no load_state_dict()"
            )
        else:
            resolved.append((key, kind, target, plan.stateful(key, target, value)))
    if plan.problems:
        shown = "; ".join(plan.problems[:_SHOWN])
        more = f" (and {len(plan.problems) - _SHOWN} more)" if len(plan.problems) > _SHOWN else ""
        raise RestoreError(f"the snapshot does not fit the live app state: {shown}{more}")
    return Prepared(app_state, plan, resolved)


def load_into(app_state: MutableMapping[str, Any], tree: dict[str, tuple[str, Any]]) -> None:
    """Restore `tree` into `app_state`: Stateful values via load_state_dict, others by key.
    Raises RestoreError, with the live state untouched, when any entry cannot be restored."""
    prepare(app_state, tree).apply()
