"""Failures of the durable tier's rounds and restores, caught and put in words.

A round or a restore never raises between collectives: its failure is exchanged with the other
ranks first. DCP raises `CheckpointException`, a BaseException, carrying each rank's own failure.
"""

from __future__ import annotations

from torch.distributed.checkpoint.api import CheckpointException

from ecsnap.errors import EcsnapError

FAILURES = (Exception, CheckpointException)


def why(exc: BaseException) -> str:
    """A failure in words: ours say it themselves, others' with their type; DCP's collected
    failures as each rank's own exception (not DCP's tracebacks)."""
    if isinstance(exc, CheckpointException):
        parts = []
        for rank, failure in sorted(exc.failures.items()):
            cause = failure[0] if isinstance(failure, tuple) else failure
            parts.append(f"rank {rank}: {why(cause)}")
        return "; ".join(parts) or "DCP failed"
    return str(exc) if isinstance(exc, EcsnapError) else f"{type(exc).__name__}: {exc}"
