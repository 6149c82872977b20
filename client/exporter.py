"""Export a snapshot from the SMPs' memory as a standard torch.distributed.checkpoint (DCP).

Collective over the job's ranks. The ranks agree on the step (the newest committed one, or the
one asked for), each pins its slot on its SMP so later saves cannot overwrite it while it is read,
and `dcp.save` writes a state dict built over zero-copy views of the arenas: plain tensors as
arena views, DTensors rebuilt over their saved local shards on a mesh without process groups
(DCP only needs it to place the shards). The layout is DCP's own, so the result loads with
`torch.distributed.checkpoint` alone at any world size. Module keys become canonical FQNs and an
optimizer's state is keyed by parameter FQN, as `get_optimizer_state_dict` writes it, so
`set_optimizer_state_dict` restores it into a model sharded another way.

The write runs on a gloo group of its own, so with wait=False it proceeds in a background thread
while training goes on (the training loop's collectives use other groups).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Mapping
from typing import Any

from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from ecsnap import dtensors
from ecsnap.errors import EcsnapError, SnapshotError
from ecsnap.fqn import canonical
from ecsnap.group import JobGroup
from ecsnap.pins import Pins
from ecsnap.restorer import agreed_steps, open_agreed
from ecsnap.saved import MappedSnapshot, Saved, Snapshot
from ecsnap.session import Session
from smp._proto import snapshot_pb2

logger = logging.getLogger(__name__)


class ExportError(SnapshotError):
    """An export to DCP could not be written."""


def _resolve(
    value: Any, meshes: dict[tuple[Any, ...], Any], path: str, origin: dict[int, Saved]
) -> Any:
    """The saved tree with every `Saved` as a tensor over the arena (DTensors rebuilt); `origin`
    maps each such tensor's id to its `Saved`."""
    if isinstance(value, Saved):
        out: Any = value.view
        if value.is_dtensor:
            meta = value.entry.dtensor
            if any(p.kind == snapshot_pb2.Placement.PARTIAL for p in meta.placements):
                raise ExportError(
                    f"{path} is a Partial DTensor (pending reduction): DCP cannot write it; "
                    "redistribute it to Shard or Replicate placements before saving"
                )
            key = (tuple(meta.mesh_shape), tuple(meta.mesh_ranks), tuple(meta.mesh_dim_names))
            mesh = meshes.get(key)
            if mesh is None:
                mesh = meshes[key] = dtensors.offline_mesh(meta)
            out = dtensors.rebuild(value.view, meta, mesh)
        origin[id(out)] = value
        return out
    if isinstance(value, dict):
        return {k: _resolve(v, meshes, f"{path}/{k}", origin) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, meshes, f"{path}/{i}", origin) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        items = [_resolve(v, meshes, f"{path}/{i}", origin) for i, v in enumerate(value)]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _fqn_keyed(osd: Mapping[str, Any], fqns: list[str], key: str) -> Mapping[str, Any]:
    """An optimizer state dict keyed by parameter FQN (get_optimizer_state_dict's form)."""
    if not fqns or "" in fqns or len(set(fqns)) != len(fqns):
        logger.warning(
            "export: the parameters of optimizer %r are not all named by a module of the app "
            "state; its state is written keyed by parameter index",
            key,
        )
        return osd
    state = {fqns[i]: v for i, v in osd.get("state", {}).items()}
    groups = [{**g, "params": [fqns[i] for i in g["params"]]} for g in osd["param_groups"]]
    return {"state": state, "param_groups": groups}


def dcp_state_dict(snapshot: Snapshot, origin: dict[int, Saved] | None = None) -> dict[str, Any]:
    """The DCP state dict of one rank's snapshot: what `dcp.save(app_state)` would have written
    at that step, with FQN-keyed module and optimizer entries. `origin`, if given, is filled
    with the id of every tensor of the result -> the `Saved` it views."""
    manifest: snapshot_pb2.Manifest = snapshot.manifest
    modules = {m.key: m for m in manifest.modules}
    optimizers = {o.key: o for o in manifest.optimizers}
    meshes: dict[tuple[Any, ...], Any] = {}
    origin = {} if origin is None else origin
    out: dict[str, Any] = {}
    for key, (_kind, value) in snapshot.tree().items():
        value = _resolve(value, meshes, key, origin)
        if key in modules and isinstance(value, Mapping):
            ddp = modules[key].ddp
            value = {canonical(name, ddp): v for name, v in value.items()}
        elif key in optimizers and isinstance(value, Mapping):
            value = _fqn_keyed(value, list(optimizers[key].param_fqns), key)
        out[key] = value
    return out


class Exports:
    """At most one export in flight per Snapshotter; a failure is raised by the next call."""

    def __init__(self, session: Session, pins: Pins) -> None:
        self._session = session
        self._pins = pins
        self._group: JobGroup | None = None  # the exports' own (collective to create, once)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _raise_pending(self) -> None:
        exc, self._error = self._error, None
        if exc is not None:
            raise ExportError(f"an earlier export failed: {exc}") from exc

    def start(self, path: Any, step: int | None, verify: bool, wait: bool) -> int:
        self.wait(None)  # one export at a time; raises an earlier one's failure
        s = self._session
        if self._group is None:
            self._group = JobGroup.dedicated()
        steps = agreed_steps(s)
        if step is not None:
            steps = [x for x in steps if x == step]
        if not steps:
            what = f"step {step}" if step is not None else "a committed step"
            raise ExportError(f"nothing to export: the job's SMPs do not hold {what} on every rank")
        found = open_agreed(s, steps[:1], verify)
        if found is None:
            raise ExportError("nothing to export")
        chosen, opened = found
        error = ""
        pinned = False
        try:
            self._pins.pin(chosen)
            pinned = True
        except EcsnapError as exc:
            error = str(exc)
        failed = [f"rank {r}: {e}" for r, e in s.all_gather((s.rank, error)) if e]
        if failed:
            if pinned:
                self._pins.unpin(chosen)
            raise ExportError(f"cannot pin step {chosen} for the export: " + "; ".join(failed))
        thread = threading.Thread(
            target=self._write, args=(path, chosen, opened), name="ecsnap-export", daemon=True
        )
        self._thread = thread
        thread.start()
        if wait:
            self.wait(None)
        return chosen

    def _write(self, path: Any, step: int, opened: Any) -> None:
        try:
            with MappedSnapshot(opened) as snapshot, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*assuming the intent is to save.*")
                state = dcp_state_dict(snapshot)
                group = self._group.gloo if self._group is not None else None
                dcp_save(state, checkpoint_id=path, process_group=group)
                del state
            logger.info("rank %d: exported step %d to %s", self._session.rank, step, path)
        except BaseException as exc:  # noqa: BLE001 - reported by the next call
            logger.error("rank %d: export of step %d failed: %s", self._session.rank, step, exc)
            self._error = exc
        finally:
            self._pins.unpin(step)

    def wait(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the export did not finish within {timeout}s")
            self._thread = None
        self._raise_pending()

    def close(self, timeout: float) -> None:
        self.wait(timeout)
