"""Pins on this rank's snapshots, shared by everything that reads a step in the background (DCP
exports, the durable tier).

The SMP keeps a pinned slot from reuse by later saves, with one pin per slot: a reader that
released its pin would release it for another reader of the same step too. Here pins are
counted, so the SMP's pin is taken by the first reader of a step and released by its last.
"""

from __future__ import annotations

import logging
import threading

from ecsnap.control import ControlClient
from ecsnap.errors import EcsnapError
from ecsnap.session import Session

logger = logging.getLogger(__name__)


class Pins:
    def __init__(self, session: Session) -> None:
        self._session = session
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}
        self._client: ControlClient | None = None  # its own socket: called from any thread

    def _smp(self) -> ControlClient:
        if self._client is None:
            self._client = self._session.side_client()
        return self._client

    def pin(self, step: int) -> None:
        """Keep this rank's snapshot of `step` from reuse (raises EcsnapError if the SMP
        refuses: it no longer holds the step complete)."""
        with self._lock:
            if not self._counts.get(step):
                self._smp().pin(self._session.rank, step, True)
            self._counts[step] = self._counts.get(step, 0) + 1

    def unpin(self, step: int) -> None:
        with self._lock:
            left = self._counts.get(step, 0) - 1
            if left > 0:
                self._counts[step] = left
                return
            self._counts.pop(step, None)
            try:
                self._smp().pin(self._session.rank, step, False)
            except EcsnapError as exc:  # the pin lapses on its own
                logger.warning(
                    "rank %d: releasing step %d failed: %s", self._session.rank, step, exc
                )

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
