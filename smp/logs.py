"""Log output of the daemon: plain text, or one JSON object per line (`--log-format json`).

Messages name their context as `job=... rank=... step=...` (or `job <id>`); the JSON form lifts
those into fields, so a log pipeline can filter by job, rank, node and step without regexes.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# "job=train-7b", "rank=3", "step=120", "node=1"; also "job train-7b: ..." and "rank 3".
_FIELD = re.compile(
    r"\b(?:job=([A-Za-z0-9][\w.-]*)"
    r"|job ([A-Za-z0-9][\w.-]*)(?=[:,;)])"
    r"|(rank|step|node|slot)[= ](\d+)\b)"
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and job/rank/step/node fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for job_eq, job_sp, key, number in _FIELD.findall(message):
            # The first mention names the subject ("rank 3 ... unlike rank 5").
            if (job_eq or job_sp) and "job" not in out:
                out["job"] = (job_eq or job_sp).rstrip(".")
            elif key and key not in out:
                out[key] = int(number)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def configure(level: str, fmt: str) -> None:
    """Set the root logger's level and format (`smp serve`, once its settings are known)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    )
    for handler in root.handlers:
        handler.setFormatter(formatter)


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LogThrottle:
    """At most one log line per (client, kind) per interval; the suppressed count is reported."""

    def __init__(self, logger: logging.Logger, interval_s: float, keys: int = 1024) -> None:
        self._logger = logger
        self._interval = interval_s
        self._keys = keys
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def warn(self, client: str, kind: str, message: str, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        key = (client, kind)
        last, suppressed = self._seen.pop(key, (-self._interval, 0))
        if now - last < self._interval:
            self._seen[key] = (last, suppressed + 1)
            return
        self._seen[key] = (now, 0)
        while len(self._seen) > self._keys:  # a bounded table, however many clients come
            self._seen.popitem(last=False)
        more = f" ({suppressed} more like it not logged)" if suppressed else ""
        self._logger.log(level, "%s: %s%s", client, message, more)
