"""The copy pipeline of a save: captured state -> arena slot -> handed to the SMP.

Ordering invariants:
- Unfenced spans are copied before save() returns (CPU), or the compute stream waits for their
  device-to-host copies (GPU): nothing can change them before their bytes are in the slot.
- Fenced spans are copied in the background. The fences (optimizer step and module forward
  pre-hooks) wait for that copy. Before the fences let any fenced operation run, the tensors'
  version counters are compared with those at capture: an in-place change nobody fenced (a
  parameter updated by hand) means the copy may be torn, and the step is aborted, never committed.
- The SMP is told "step S is in slot X" only after every byte is in the slot and verified.
- At most one save is in flight; its failure is kept and raised by the next call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ecsnap.arena import MappedArena
from ecsnap.control import ControlClient, Grant
from ecsnap.errors import EcsnapError, SnapshotError
from ecsnap.fences import Fences
from ecsnap.flatten import FlatState, SpanCopy
from ecsnap.handle import SaveHandle

logger = logging.getLogger(__name__)


def _target(arena: MappedArena, span: SpanCopy) -> torch.Tensor:
    return arena.tensor[span.offset : span.offset + span.nbytes]


class TornSnapshot(SnapshotError):
    """A tensor changed in place while its copy was in flight; the step was not committed."""


class _InFlight:
    """One save between save() and the SMP's answer to its commit."""

    def __init__(self, handle: SaveHandle, flat: FlatState) -> None:
        self.handle = handle
        self.flat = flat
        self._lock = threading.Lock()
        self._verified: set[bool] = set()  # device classes checked: False = CPU, True = CUDA
        self.torn = ""

    def verify(self, cuda: bool) -> None:
        """Compare version counters once per device class, at the first point after which every
        change is known to come after the copy."""
        with self._lock:
            if cuda in self._verified:
                return
            self._verified.add(cuda)
            changed = [(t, a, b) for t, a, b in self.flat.changed() if t.is_cuda == cuda]
            if changed and not self.torn:
                tensor, before, after = changed[0]
                more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
                self.torn = (
                    f"{self.flat.path_of(tensor)}{more} changed in place while its copy was in "
                    f"flight (version {before} -> {after}), so step {self.handle.step} was not "
                    "committed. Tensors of the app state's optimizers and modules are copied "
                    "after save() returns: change them only in optimizer.step() or forward() "
                    "(both wait for the copy), or after h.wait()"
                )


class Copier:
    def __init__(self, worker: ControlClient, rank: int) -> None:
        self._worker = worker
        self._rank = rank
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecsnap-copy")
        self._side_stream: Any = None
        self._current: _InFlight | None = None
        self.inflight: SaveHandle | None = None
        self.error: BaseException | None = None
        self.fence_wait_s = 0.0  # total time fences waited for copies
        self.fences = Fences(self.fence)

    def start(self, handle: SaveHandle, flat: FlatState, arena: MappedArena, grant: Grant) -> None:
        """In the caller's thread: copy what is unfenced, then launch the rest."""
        current = _InFlight(handle, flat)
        cuda = [s for s in flat.spans if s.is_cuda]
        if cuda:
            arena.register_with_cuda()
            self._launch_cuda(handle, cuda, arena)
        with torch.no_grad():
            for span in flat.spans:
                if not span.background and not span.is_cuda:
                    _target(arena, span).copy_(span.source())
        self._current, self.inflight = current, handle
        self._executor.submit(self._finish, current, arena, grant)

    def _launch_cuda(self, handle: SaveHandle, spans: list[SpanCopy], arena: MappedArena) -> None:
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        stream, compute = self._side_stream, torch.cuda.current_stream()
        ready = torch.cuda.Event()
        ready.record(compute)  # the values the caller computed so far
        with torch.cuda.stream(stream):
            stream.wait_event(ready)
            for span in spans:
                if not span.background:
                    _target(arena, span).copy_(span.source(), non_blocking=True)
            unfenced = torch.cuda.Event()
            unfenced.record(stream)
            for span in spans:
                if span.background:
                    _target(arena, span).copy_(span.source(), non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        compute.wait_event(unfenced)  # no later kernel changes an unfenced tensor mid-copy
        handle._gpu_event = done

    def _finish(self, current: _InFlight, arena: MappedArena, grant: Grant) -> None:
        handle, flat = current.handle, current.flat
        try:
            with torch.no_grad():
                for span in flat.spans:
                    if span.background and not span.is_cuda:
                        _target(arena, span).copy_(span.source())
            current.verify(cuda=False)  # before the fences let CPU tensors change
            handle._cpu_done.set()
            if handle._gpu_event is not None:
                handle._gpu_event.synchronize()
                current.verify(cuda=True)  # unless a fence checked them first
            if current.torn:
                raise TornSnapshot(current.torn, "TORN")
            handle._set_copied()
            self._worker.commit_save(
                self._rank,
                handle.step,
                grant,
                max(flat.nbytes, 1),
                flat.manifest.SerializeToString(),
            )
            handle._set_handed_over()
        except BaseException as exc:  # noqa: BLE001 - reported to the SMP and to the next call
            logger.error("rank %d: save of step %d failed: %s", self._rank, handle.step, exc)
            self.error = exc
            handle._fail(exc)
            # If the SMP is gone too, the step simply never commits.
            with contextlib.suppress(EcsnapError):
                self._worker.abort_save(self._rank, handle.step, grant, str(exc), timeout=5.0)
        finally:
            if self._current is current:
                self._current = None  # releases the captured tensors

    def fence(self) -> None:
        """Called before an optimizer step or a module's forward: wait for the copy in flight."""
        current = self._current
        if current is None or current.handle.done():
            return
        start = time.perf_counter()
        current.handle._cpu_done.wait()
        if current.handle._gpu_event is not None:
            current.verify(cuda=True)  # before this fenced op enqueues its changes
            torch.cuda.current_stream().wait_event(current.handle._gpu_event)
        self.fence_wait_s += time.perf_counter() - start

    def finish_inflight(self) -> None:
        # Until the SMP answered the previous commit, its slot is still being written: a new
        # begin_save (another socket) could otherwise overtake the commit and supersede it.
        if self.inflight is not None:
            self.inflight._handed_over.wait()

    def raise_pending(self) -> None:
        exc, self.error = self.error, None
        if exc is not None:
            raise SnapshotError(
                f"an earlier background save failed: {exc}", getattr(exc, "code", "")
            ) from exc

    def close(self, timeout: float) -> None:
        handle = self.inflight
        try:
            if handle is not None and not handle._handed_over.wait(timeout):
                raise TimeoutError(
                    f"close() waited {timeout}s for the save of step {handle.step} "
                    f"({handle.nbytes} bytes) to be {'committed' if handle.done() else 'copied'}"
                    " to the SMP; it was abandoned"
                )
        finally:
            self._executor.shutdown(wait=handle is None or handle._handed_over.is_set())
            self.fences.remove()
