"""The contenders: what each one does after a training step, how it restores, what it measures.

A `Spec` (name, kind, interval, parity) is shared by the runner and the worker; a `Checkpointer`
runs inside one rank. Every checkpointer saves the same content: the model's parameters, the
per-rank parameter, AdamW's state, the data position and the RNG states.

Per checkpoint it records `blocked_s` (time the training loop could not proceed because of this
checkpoint) and `safe_s` (from the checkpoint's start until it is safe: on disk and fsynced, or
committed by the SMP; with parity, committed on every node).
"""

from __future__ import annotations

import inspect
import os
import pickle
import queue
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ecsnap.bench.train.workload import Workload

KINDS = ("none", "torch_save", "dcp_save", "dcp_async", "ecsnap")


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    interval: int  # checkpoint after every `interval` steps; 0 = never
    parity: bool = False
    label: str = ""

    @property
    def disk(self) -> bool:
        return self.kind in ("torch_save", "dcp_save", "dcp_async")

    @property
    def ecsnap(self) -> bool:
        return self.kind == "ecsnap"


def specs(interval: int) -> dict[str, Spec]:
    """Every contender the benchmark knows, in report order."""
    n = interval
    return {
        s.name: s
        for s in (
            Spec("baseline", "none", 0, label="no fault tolerance"),
            Spec("torch_save", "torch_save", n, label=f"torch.save /{n}"),
            Spec("dcp_save", "dcp_save", n, label=f"DCP save /{n}"),
            Spec("dcp_async", "dcp_async", n, label=f"DCP async_save /{n}"),
            Spec("ecsnap", "ecsnap", 1, label="ecsnap /1"),
            Spec("ecsnap_n", "ecsnap", n, label=f"ecsnap /{n}"),
            Spec("ecsnap_parity", "ecsnap", 1, parity=True, label="ecsnap+parity /1"),
            Spec("ecsnap_parity_n", "ecsnap", n, parity=True, label=f"ecsnap+parity /{n}"),
        )
    }


@dataclass
class Record:
    step: int
    blocked_s: float = 0.0
    safe_s: float | None = None
    copy_s: float | None = None
    skipped: bool = False  # ecsnap on_busy="skip": the previous step was not committed yet
    started: float = field(default=0.0, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "blocked_s": self.blocked_s,
            "safe_s": self.safe_s,
            "copy_s": self.copy_s,
            "skipped": self.skipped,
        }


class Checkpointer:
    """Base: no fault tolerance. Subclasses override save/restore/finish."""

    def __init__(self, spec: Spec, w: Workload, rank: int, world: int, ckpt_dir: Path) -> None:
        self.spec, self.w, self.rank, self.world = spec, w, rank, world
        self.dir = ckpt_dir
        self.records: list[Record] = []

    def save(self, step: int) -> Record | None:
        """Checkpoint `step` (called right after that step's optimizer step)."""
        return None

    def after_step(self) -> None:
        """Called after every training step (fences that delay the next step are charged here)."""

    def restore(self) -> int | None:
        return None

    def finish(self, timeout: float) -> None:
        """Wait until the last checkpoint is safe (not timed as training)."""

    def close(self) -> None:
        pass

    # -- shared helpers -------------------------------------------------------------------------

    def extras(self) -> bytes:
        """Per-rank small state: data position and RNG states (pickled, as most codebases do)."""
        from ecsnap.rng import RNGState

        return pickle.dumps({"data": self.w.data.state_dict(), "rng": RNGState().state_dict()})

    def load_extras(self, blob: bytes) -> None:
        from ecsnap.rng import RNGState

        obj = pickle.loads(blob)
        self.w.data.load_state_dict(obj["data"])
        RNGState().load_state_dict(obj["rng"])

    def newest_common(self, mine: list[int]) -> int | None:
        everyone: list[Any] = [mine]
        if dist.is_initialized():
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
        common = set.intersection(*(set(s) for s in everyone))
        return max(common) if common else None


class TorchSave(Checkpointer):
    """`torch.save` of the state dicts to a per-rank file, synchronously in the loop.

    Safe = written and fsynced; the fsync runs in a thread so it does not add to blocked time
    (most codebases do not fsync at all)."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.mine = self.dir / f"rank{self.rank}"
        self.mine.mkdir(parents=True, exist_ok=True)
        self.syncs: list[threading.Thread] = []

    def state(self, step: int) -> dict[str, Any]:
        w = self.w
        return {
            "step": step,
            "model": w.model.state_dict(),
            "shard": w.shard.detach(),
            "optim": w.optim.state_dict(),
            "extras": self.extras(),
        }

    def save(self, step: int) -> Record:
        rec = Record(step, started=time.perf_counter())
        path = self.mine / f"step{step:08d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(step), tmp)
        os.replace(tmp, path)
        rec.blocked_s = time.perf_counter() - rec.started

        def sync() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            rec.safe_s = time.perf_counter() - rec.started
            for old in self.mine.glob("step*.pt"):
                if old.name < path.name:
                    old.unlink(missing_ok=True)

        t = threading.Thread(target=sync, daemon=True)
        t.start()
        self.syncs.append(t)
        self.records.append(rec)
        return rec

    def finish(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.syncs:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise TimeoutError(f"fsync of a torch.save checkpoint took over {timeout}s")

    def restore(self) -> int | None:
        steps = [int(p.stem[4:]) for p in self.mine.glob("step*.pt")]
        step = self.newest_common(steps)
        if step is None:
            return None
        state = torch.load(self.mine / f"step{step:08d}.pt", weights_only=False)
        w = self.w
        w.model.load_state_dict(state["model"])
        with torch.no_grad():
            w.shard.copy_(state["shard"])
        w.optim.load_state_dict(state["optim"])
        self.load_extras(state["extras"])
        return int(state["step"])


class _DcpApp:
    """The app state as DCP's Stateful, the way the DCP tutorial writes it. Per-rank entries get
    rank-specific keys: DCP deduplicates equal keys across ranks as replicated data."""

    def __init__(self, ckpt: Checkpointer) -> None:
        self.c = ckpt

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        w, r = self.c.w, self.c.rank
        model_sd, optim_sd = get_state_dict(w.holder, w.optim)
        if w.cfg.sharding == "fsdp":  # every entry is a DTensor: DCP places the shards itself
            return {"model": model_sd, "optim": optim_sd, f"rank{r}": {"extras": self.c.extras()}}
        shard = model_sd.pop("shard")
        optim: dict[str, Any] = dict(optim_sd)
        optim["state"] = dict(optim["state"])
        shard_optim = optim["state"].pop("shard", None)
        return {
            "model": model_sd,
            "optim": optim,
            f"rank{r}": {"shard": shard, "shard_optim": shard_optim, "extras": self.c.extras()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        w, r = self.c.w, self.c.rank
        mine = state[f"rank{r}"]
        if w.cfg.sharding == "fsdp":
            set_state_dict(
                w.holder, w.optim, model_state_dict=state["model"], optim_state_dict=state["optim"]
            )
            self.c.load_extras(mine["extras"])
            return
        model_sd = dict(state["model"])
        model_sd["shard"] = mine["shard"]
        optim_sd = {
            "state": dict(state["optim"]["state"]),
            "param_groups": state["optim"]["param_groups"],
        }
        if mine["shard_optim"] is not None:
            optim_sd["state"]["shard"] = mine["shard_optim"]
        set_state_dict(w.holder, w.optim, model_state_dict=model_sd, optim_state_dict=optim_sd)
        self.c.load_extras(mine["extras"])


class DcpSave(Checkpointer):
    """`torch.distributed.checkpoint.save` (sync) or `async_save` (default thread executor and
    stager), one directory per step, on a separate gloo group as torchtitan does."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.pg = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self.app = _DcpApp(self)
        self.pending: Future[Any] | None = None
        self.pending_rec: Record | None = None
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, step: int) -> Path:
        return self.dir / f"step{step:08d}"

    def complete_steps(self) -> list[int]:
        return sorted(int(p.name[4:]) for p in self.dir.glob("step*") if (p / ".metadata").exists())

    def prune(self, keep: int) -> None:
        if self.rank == 0:
            for old in self.complete_steps():
                if old < keep:
                    shutil.rmtree(self.path(old), ignore_errors=True)

    def save(self, step: int) -> Record:
        from torch.distributed.checkpoint import state_dict_saver as dcp

        rec = Record(step, started=time.perf_counter())
        if self.spec.kind == "dcp_save":
            dcp.save({"app": self.app}, checkpoint_id=self.path(step), process_group=self.pg)
            rec.blocked_s = rec.safe_s = time.perf_counter() - rec.started
            self.prune(step)
        else:
            if self.pending is not None:  # at most one in flight, as torchtitan does
                self.pending.result()
                if self.pending_rec is not None:
                    self.prune(self.pending_rec.step)
            fut = dcp.async_save(
                {"app": self.app}, checkpoint_id=self.path(step), process_group=self.pg
            )
            upload: Future[Any] = fut if isinstance(fut, Future) else fut.upload_completion

            def done(_: Future[Any], rec: Record = rec) -> None:
                rec.safe_s = time.perf_counter() - rec.started

            upload.add_done_callback(done)
            self.pending, self.pending_rec = upload, rec
            rec.blocked_s = time.perf_counter() - rec.started
        self.records.append(rec)
        return rec

    def finish(self, timeout: float) -> None:
        if self.pending is not None:
            self.pending.result(timeout)
            if self.pending_rec is not None:
                self.prune(self.pending_rec.step)

    def restore(self) -> int | None:
        from torch.distributed.checkpoint import state_dict_loader as dcp

        step = self.newest_common(self.complete_steps())
        if step is None:
            return None
        dcp.load({"app": self.app}, checkpoint_id=self.path(step), process_group=self.pg)
        return step


class Ecsnap(Checkpointer):
    """ecsnap: `snap.save(step, app_state)`; parity and group come from $ECSNAP_PARITY and
    $ECSNAP_GROUP_SIZE (set by the runner; one node = no parity). Blocked = time in save() plus
    the time the optimizer fence waited for this snapshot's copy. Safe = committed (a second
    control channel, in a thread, waits for the SMP's commit of each step). With parity, a save
    while the previous step is not yet committed everywhere is skipped (the client's default
    on_busy="skip"); skipped saves are recorded as such."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        import ecsnap

        if self.spec.parity and "parity" not in inspect.signature(ecsnap.Snapshotter).parameters:
            raise RuntimeError(
                "this ecsnap client has no parity support (Snapshotter(parity=...)): "
                "the parity-on contender cannot run"
            )
        self.snap = ecsnap.Snapshotter(timeout=120.0)
        w = self.w
        self.app: dict[str, Any] = {
            "model": w.model,
            "shard": w.shard,
            "optim": w.optim,
            "data": w.data,
            "rng": ecsnap.RNGState(),
        }
        if w.cfg.sharding == "fsdp":  # the padding is a sharded parameter of the FSDP2 root
            del self.app["shard"]
            self.app["model"] = w.holder
        self.last: Record | None = None
        self.handle: Any = None
        self.fence_mark = 0.0
        self.watch: queue.Queue[tuple[Record, Any] | None] = queue.Queue()
        self.watcher: threading.Thread | None = None
        self.watch_error: BaseException | None = None

    def save(self, step: int) -> Record:
        self._charge_fence()
        rec = Record(step, started=time.perf_counter())
        h = self.snap.save(step, self.app)
        rec.blocked_s = time.perf_counter() - rec.started  # includes the multi-node agreement
        self.fence_mark = self.snap.fence_wait_s
        self.records.append(rec)
        if getattr(h, "skipped", False):
            rec.skipped = True
            return rec
        self.handle, self.last = h, rec
        if self.watcher is None:
            self.watcher = threading.Thread(target=self._watch, daemon=True)
            self.watcher.start()
        self.watch.put((rec, h))
        return rec

    def _charge_fence(self) -> None:
        if self.last is not None:
            self.last.blocked_s += self.snap.fence_wait_s - self.fence_mark
            self.fence_mark = self.snap.fence_wait_s

    def after_step(self) -> None:
        self._charge_fence()

    def _watch(self) -> None:
        from ecsnap.control import ControlClient

        chan = ControlClient(self.snap.socket, self.snap.job_id, 130.0)
        try:
            while (item := self.watch.get()) is not None:
                rec, h = item
                deadline = time.monotonic() + 120.0
                while time.monotonic() < deadline:
                    resp = chan.wait_committed(rec.step, 10_000, timeout=130.0)
                    if resp.committed:
                        rec.safe_s = time.perf_counter() - rec.started
                        break
                    if h.exception() is not None:
                        break
                rec.copy_s = h.copy_s or None
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.watch_error = exc
        finally:
            chan.close()

    def finish(self, timeout: float) -> None:
        if self.handle is not None:
            self.handle.wait_protected(timeout)
        self._charge_fence()
        if self.watcher is not None:
            self.watch.put(None)
            self.watcher.join(timeout)
            self.watcher = None
        if self.watch_error is not None:
            raise RuntimeError(f"waiting for commits failed: {self.watch_error}")

    def restore(self) -> int | None:
        return self.snap.restore(self.app)

    def close(self) -> None:
        self.snap.close(timeout=30.0)


def make(spec: Spec, w: Workload, rank: int, world: int, ckpt_dir: Path) -> Checkpointer:
    cls: type[Checkpointer] = {
        "none": Checkpointer,
        "torch_save": TorchSave,
        "dcp_save": DcpSave,
        "dcp_async": DcpSave,
        "ecsnap": Ecsnap,
    }[spec.kind]
    return cls(spec, w, rank, world, ckpt_dir)
