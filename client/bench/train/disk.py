"""The disk contenders: `torch.save` every N steps and `torch.distributed.checkpoint` (`save`,
`async_save`) every N steps, each restoring from its files."""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ecsnap.bench.train.base import Checkpointer, Record


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
