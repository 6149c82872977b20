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
import queue
import threading
import time
from pathlib import Path
from typing import Any

from ecsnap.bench.train.base import Checkpointer, Record, Spec, specs
from ecsnap.bench.train.disk import DcpSave, TorchSave
from ecsnap.bench.train.workload import Workload

__all__ = ["Checkpointer", "Ecsnap", "Record", "Spec", "make", "specs"]


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
        durable: dict[str, Any] = {}
        if self.spec.persist:  # the durable tier: DCP checkpoints next to the disk contenders'
            durable = {"persist_to": self.dir / "durable", "persist_every": self.spec.persist}
        self.snap = ecsnap.Snapshotter(timeout=120.0, **durable)
        self.by_step: dict[int, Record] = {}
        self.poller: threading.Thread | None = None
        self.polling = threading.Event()
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
        self.by_step[step] = rec
        if self.watcher is None:
            self.watcher = threading.Thread(target=self._watch, daemon=True)
            self.watcher.start()
        if self.spec.persist and self.poller is None:
            self.polling.set()
            self.poller = threading.Thread(target=self._poll_durable, daemon=True)
            self.poller.start()
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

    def _poll_durable(self) -> None:
        """Time until a step is complete in the durable tier (polled every 20 ms: more often
        would take CPU from training on a small machine)."""
        seen = None
        while self.polling.is_set():
            now, step = time.perf_counter(), self.snap.persisted
            if step is not None and step != seen:
                seen = step
                rec = self.by_step.get(step)
                if rec is not None and rec.durable_s is None:
                    rec.durable_s = now - rec.started
            time.sleep(0.02)

    def finish(self, timeout: float) -> None:
        if self.handle is not None:
            self.handle.wait_protected(timeout)
        if self.poller is not None:  # the last due step's write, if one is going on
            deadline = time.monotonic() + timeout
            n = self.spec.persist
            due = max((r.step for r in self.records if r.step > 0 and r.step % n == 0), default=-1)
            while (self.snap.persisted or -1) < due and time.monotonic() < deadline:
                time.sleep(0.01)
            self.polling.clear()
            self.poller.join(timeout)
            self.poller = None
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
