"""A bandwidth cap shared by every parity stream an SMP sends (`--parity-bandwidth`).

A token bucket: sending n bytes takes n tokens; tokens accrue at `rate` bytes per second up to a
burst of `burst` bytes (50 ms worth, at least one 1 MiB piece), so a cap holds over any window
much longer than the burst while short pauses do not throttle what follows. Senders that find
the bucket empty sleep for exactly the deficit; the lock is held only for the arithmetic.
"""

from __future__ import annotations

import re
import threading
import time

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?(?:/s|ps)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float | None:
    """Bytes per second from '500M', '1.5GB/s', '800MiB/s', '0' or 'unlimited' (None: no cap)."""
    if text.strip().lower() in ("", "0", "none", "unlimited", "off"):
        return None
    match = _RATE.match(text)
    if match is None:
        raise ValueError(
            f"bandwidth {text!r} is not understood: give bytes per second such as 500M, 1.5G, "
            "800MiB/s, or 'unlimited'"
        )
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if value < 1 << 20:
        raise ValueError(f"bandwidth {text!r} is below 1 MiB/s: parity would never keep up")
    return value


class Pacer:
    """Take tokens for bytes about to be sent; unlimited when `rate` is None."""

    def __init__(self, rate: float | None, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1 << 20, int((rate or 0) / 20))
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if self.rate is None:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n  # may go negative: the debt is paid by sleeping
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
