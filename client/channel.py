"""Request/response over the SMP's control socket (zmq DEALER), with timeouts and clear errors.

A channel belongs to one thread at a time (zmq sockets are not thread-safe; a lock enforces it).
Replies are matched by request id, so a late answer to a timed-out request is discarded.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

import zmq
from google.protobuf.message import Message

from ecsnap.errors import (
    ChecksumError,
    MemoryLimitError,
    SMPUnavailableError,
    SnapshotError,
)
from smp._proto import control_pb2 as pb
from smp.sockdir import UnsafeDirectory, check_socket_dir

_ERRORS: dict[int, type[SnapshotError]] = {
    pb.MEMORY_LIMIT: MemoryLimitError,
    pb.STORE_FULL: MemoryLimitError,
    pb.CHECKSUM_MISMATCH: ChecksumError,
}


def error_of(error: pb.Error, where: str) -> SnapshotError:
    """The library's exception for an error the SMP reported (its code kept in `.code`)."""
    code = pb.ErrorCode.Name(error.code) if error.code in pb.ErrorCode.values() else "INTERNAL"
    return _ERRORS.get(error.code, SnapshotError)(f"{where}: {error.message}", code)


_RESTART_CHECK_S = 0.5  # while waiting, how often to look whether the SMP was restarted


class Channel:
    def __init__(self, socket_path: str, job_id: str, timeout: float, job_key: bytes = b"") -> None:
        self.socket_path = socket_path
        self.job_id = job_id
        self.job_key = job_key  # presented on every request (smp.access)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._sock: zmq.Socket[bytes] | None = None
        self._trusted = False  # the socket's directory and file passed check_socket_dir

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            if not self._trusted:  # once per channel: only its owner (or root) can change it
                try:
                    self._trusted = check_socket_dir(self.socket_path)
                except UnsafeDirectory as exc:
                    raise SMPUnavailableError(str(exc)) from None
                if not self._trusted:
                    self._inode()  # gone since the caller looked: raises "no SMP socket"
            sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"ipc://{self.socket_path}")
            self._sock = sock
        return self._sock

    def call(self, kind: str, body: Message, timeout: float | None = None) -> pb.Response:
        """Send one request whose body field `kind` is `body`; return the reply (its body field
        `kind` is set)."""
        request = pb.Request(request_id=next(self._ids), job_id=self.job_id, job_key=self.job_key)
        getattr(request, kind).CopyFrom(body)
        limit = self.timeout if timeout is None else timeout
        with self._lock:
            response = self._exchange(kind, request, limit)
        if response.HasField("error"):
            raise error_of(response.error, f"SMP at {self.socket_path}")
        if response.WhichOneof("body") != kind:
            raise SnapshotError(
                f"SMP at {self.socket_path} answered {kind} with "
                f"{response.WhichOneof('body')}: is it the same ecsnap version?"
            )
        return response

    def _inode(self) -> tuple[int, int]:
        """Which socket file is there: a restarted SMP binds a new one (the inode number alone
        may be reused at once, the change time is not)."""
        try:
            st = os.stat(self.socket_path)
            return st.st_ino, st.st_ctime_ns
        except FileNotFoundError:
            raise SMPUnavailableError(
                f"no SMP socket at {self.socket_path}: start the node's SMP (`smp serve "
                f"--socket {self.socket_path}` or `smp launch`), or point $ECSNAP_SOCKET at it"
            ) from None

    def _exchange(self, kind: str, request: pb.Request, limit: float) -> pb.Response:
        """Send and wait for the matching reply. If the SMP restarts meanwhile (a new socket
        file), the request died with the old one: it is sent once more to the new SMP instead of
        waiting out the timeout."""
        inode = self._inode()
        sock = self._socket()
        sock.send(request.SerializeToString())
        resent = False
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._reset()
                raise SMPUnavailableError(
                    f"the SMP at {self.socket_path} did not answer {kind} within {limit:g}s: "
                    "is it running (`smp status`)?"
                )
            if not sock.poll(int(min(remaining, _RESTART_CHECK_S) * 1000) + 1):
                now = self._inode() if os.path.exists(self.socket_path) else inode
                if now != inode and not resent:
                    self._reset()
                    inode, resent = now, True
                    sock = self._socket()
                    sock.send(request.SerializeToString())
                continue
            response = pb.Response()
            response.ParseFromString(sock.recv())
            if response.request_id == request.request_id:
                return response

    def _reset(self) -> None:
        # A fresh socket drops queued requests and replies of a dead or restarted SMP.
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._reset()
