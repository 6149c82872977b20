"""SaveHandle: a future-like view of one background save."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ecsnap.errors import SnapshotError


class SaveHandle:
    """Returned by `Snapshotter.save`. `wait()`: the copy is done and the tensors may change again.
    `wait_protected()`: the step is committed (complete and checksummed on every rank)."""

    def __init__(
        self, step: int, nbytes: int, wait_committed: Callable[[int, float | None], None]
    ) -> None:
        self.step = step
        self.nbytes = nbytes
        self.blocked_s = 0.0  # time the caller spent inside save()
        self.copy_s = 0.0
        self._started = time.perf_counter()
        self._copied = threading.Event()
        self._cpu_done = threading.Event()  # host copies done and device copies enqueued
        self._gpu_event: Any = None  # torch.cuda.Event recorded after the device copies
        self._handed_over = threading.Event()  # commit (or abort) answered by the SMP
        self._error: BaseException | None = None
        self._wait_committed = wait_committed
        self.protected_s: float | None = None
        self.skipped = False  # not snapshotted: the previous step was not committed yet

    @classmethod
    def skipped_step(
        cls, step: int, wait_committed: Callable[[int, float | None], None]
    ) -> SaveHandle:
        """A save the job skipped on every rank (on_busy="skip")."""
        handle = cls(step, 0, wait_committed)
        handle.skipped = True
        handle._cpu_done.set()
        handle._copied.set()
        handle._handed_over.set()
        return handle

    # -- set by the snapshotter's worker --------------------------------------------------------

    def _set_copied(self) -> None:
        self.copy_s = time.perf_counter() - self._started
        self._copied.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._cpu_done.set()
        self._copied.set()
        self._handed_over.set()

    def _set_handed_over(self) -> None:
        self._handed_over.set()

    # -- public ----------------------------------------------------------------------------------

    def done(self) -> bool:
        """True once the copy finished (successfully or not)."""
        return self._copied.is_set()

    def exception(self) -> BaseException | None:
        return self._error

    def wait(self, timeout: float | None = None) -> None:
        """Block until the copy into the SMP's memory is done; raise if it failed."""
        if not self._copied.wait(timeout):
            raise TimeoutError(
                f"the copy of step {self.step} ({self.nbytes} bytes) did not "
                f"finish within {timeout}s"
            )
        if self._error is not None:
            raise SnapshotError(f"saving step {self.step} failed: {self._error}") from self._error

    def wait_protected(self, timeout: float | None = None) -> None:
        """Block until the step is committed on the SMP side; raise if it failed or timed out."""
        if self.skipped:
            raise SnapshotError(
                f"step {self.step} was skipped (the previous step was not yet committed on "
                "every node), so it will never be protected; save with on_busy='wait' where "
                "a step must be protected (e.g. the last one)",
                code="SKIPPED",
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait(timeout)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._handed_over.wait(remaining):
            raise TimeoutError(f"the SMP did not accept step {self.step} within {timeout}s")
        if self._error is not None:
            raise SnapshotError(f"saving step {self.step} failed: {self._error}") from self._error
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._wait_committed(self.step, remaining)
        if self.protected_s is None:
            self.protected_s = time.perf_counter() - self._started

    def __repr__(self) -> str:
        state = (
            "skipped"
            if self.skipped
            else "failed"
            if self._error
            else "copied"
            if self.done()
            else "copying"
        )
        return f"SaveHandle(step={self.step}, {state})"
