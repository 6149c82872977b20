"""Errors raised by the trainer library. Every message says what happened and what to do."""

from __future__ import annotations


class EcsnapError(Exception):
    """Root of every ecsnap error."""


class SMPUnavailableError(EcsnapError):
    """The node's SMP did not answer on its socket."""


class SnapshotError(EcsnapError):
    """The SMP refused or failed a save or restore (memory limit, checksum mismatch, ...)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class MemoryLimitError(SnapshotError):
    """The snapshot does not fit the SMP's memory limit or its store; nothing stored was lost."""


class ChecksumError(SnapshotError):
    """Stored bytes do not match their checksums; the snapshot was not loaded."""


class RestoreError(EcsnapError):
    """Ranks could not agree on, or load, a common step."""
