"""Domain errors of the SMP. Each carries the wire error code the control server answers with.

Messages say what was wrong and what to do; the daemon keeps serving after any of them.
"""

from __future__ import annotations

from typing import TypeAlias

from smp._proto import control_pb2

ErrorCode: TypeAlias = control_pb2.ErrorCode


class SmpError(Exception):
    """Root of every error the daemon reports to a client."""

    code: ErrorCode = control_pb2.INTERNAL


class BadRequest(SmpError):
    code = control_pb2.BAD_REQUEST


class NotFound(SmpError):
    code = control_pb2.NOT_FOUND


class NotRegistered(SmpError):
    code = control_pb2.NOT_REGISTERED


class MemoryLimitExceeded(SmpError):
    code = control_pb2.MEMORY_LIMIT


class StoreFull(SmpError):
    code = control_pb2.STORE_FULL


class ChecksumMismatch(SmpError):
    code = control_pb2.CHECKSUM_MISMATCH


class Conflict(SmpError):
    code = control_pb2.CONFLICT


class Busy(SmpError):
    """No slot may take a new step: each holds one that must be kept (committed or pinned)."""

    code = control_pb2.BUSY


class Aborted(SmpError):
    code = control_pb2.ABORTED


class ConfigError(SmpError):
    """Invalid daemon settings, reported at start before anything binds."""

    code = control_pb2.BAD_REQUEST


class Unauthenticated(SmpError):
    """A peer call without the job's secret (gRPC only)."""

    code = control_pb2.BAD_REQUEST


class RebuildFailed(SmpError):
    """Too many nodes of a group are gone (or their cells are corrupt) to rebuild a step."""

    code = control_pb2.NOT_FOUND
