"""Domain errors of the SMP. Each names its error code; the servers translate codes to the wire
(control.proto's ErrorCode, gRPC status codes) through one table each.

Messages say what was wrong and what to do; the daemon keeps serving after any of them.
"""

from __future__ import annotations


class SmpError(Exception):
    """Root of every error the daemon reports to a client."""

    code = "INTERNAL"


class BadRequest(SmpError):
    code = "BAD_REQUEST"


class NotFound(SmpError):
    code = "NOT_FOUND"


class NotRegistered(SmpError):
    code = "NOT_REGISTERED"


class MemoryLimitExceeded(SmpError):
    code = "MEMORY_LIMIT"


class StoreFull(SmpError):
    code = "STORE_FULL"


class ChecksumMismatch(SmpError):
    code = "CHECKSUM_MISMATCH"


class Conflict(SmpError):
    code = "CONFLICT"


class Busy(SmpError):
    """No slot may take a new step: each holds one that must be kept (committed or pinned)."""

    code = "BUSY"


class Aborted(SmpError):
    code = "ABORTED"


class ConfigError(SmpError):
    """Invalid daemon settings, reported at start before anything binds."""

    code = "BAD_REQUEST"


class Unauthenticated(SmpError):
    """A request without the credential it needs (a peer call without the job's secret)."""

    code = "UNAUTHENTICATED"


class RebuildFailed(SmpError):
    """Too many nodes of a group are gone, unreachable or corrupt to rebuild a step."""

    code = "REBUILD_FAILED"


class PeerUnavailable(SmpError):
    """A peer SMP did not take what it had to (down, restarting, unreachable)."""

    code = "PEER_UNAVAILABLE"


class Internal(SmpError):
    """The SMP failed on its side (e.g. reading an arena); the message says what."""

    code = "INTERNAL"


_BY_CODE: dict[str, type[SmpError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        NotFound,
        NotRegistered,
        MemoryLimitExceeded,
        StoreFull,
        ChecksumMismatch,
        Conflict,
        Busy,
        Aborted,
        Unauthenticated,
        RebuildFailed,
        PeerUnavailable,
        Internal,
    )
}


def from_code(code: str, message: str) -> SmpError:
    """The error a code names (as a peer reported it), Internal for an unknown code."""
    return _BY_CODE.get(code, Internal)(message)
