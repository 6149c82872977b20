"""What the peer port checks before and while a call runs, so strangers cannot take it down.

- Credentials come from the call's metadata (the job id and the job's secret) and are checked
  before a single message of the call is read: an unauthenticated stream costs one lookup.
- Every call runs under a deadline (the caller's, capped), and a stream that moves no message for
  `idle_s` is cut: an idle or stalled stream cannot hold the port.
- One client address has at most `calls_per_client` calls in flight; the standard health service
  is not counted (it is answered on the event loop, never behind the peer calls).
- A message that does not parse is answered INVALID_ARGUMENT and logged once per client address
  per interval, without a traceback: a flood of garbage is not a flood of log lines.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from smp.defaults import PEER_JOB_KEY, PEER_TOKEN_KEY
from smp.errors import BadRequest, SmpError, Unauthenticated
from smp.logs import LogThrottle

logger = logging.getLogger("smp.peer")

# Domain error code -> gRPC status (anything else is INTERNAL).
CODES: dict[str, grpc.StatusCode] = {
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "BAD_REQUEST": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "NOT_REGISTERED": grpc.StatusCode.NOT_FOUND,
    "CONFLICT": grpc.StatusCode.FAILED_PRECONDITION,
    "BUSY": grpc.StatusCode.FAILED_PRECONDITION,
    "MEMORY_LIMIT": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "STORE_FULL": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "CHECKSUM_MISMATCH": grpc.StatusCode.DATA_LOSS,
    "REBUILD_FAILED": grpc.StatusCode.FAILED_PRECONDITION,
    "ABORTED": grpc.StatusCode.ABORTED,
}
M = TypeVar("M", bound=Message)
T = TypeVar("T")


@dataclass(frozen=True)
class PeerLimits:
    idle_s: float = 30.0  # a stream moving no message this long is cut
    calls_per_client: int = 64  # peer calls in flight per client address
    max_call_s: float = 600.0  # the longest any call may run, whatever deadline it asked for
    log_interval_s: float = 60.0  # one log line per client address and kind of refusal


class Malformed:
    """What a request that does not parse deserializes to (the handler refuses it)."""

    def __init__(self, size: int, error: str) -> None:
        self.size, self.error = size, error


def tolerant(cls: type[M]) -> Callable[[bytes], M | Malformed]:
    """A request deserializer that never raises (grpc would log a traceback per message)."""

    def parse(data: bytes) -> M | Malformed:
        try:
            return cls.FromString(data)
        except Exception as exc:  # noqa: BLE001 - any undecodable input is the same refusal
            return Malformed(len(data), str(exc) or type(exc).__name__)

    return parse


def client_address(peer: str) -> str:
    """'ipv4:10.0.0.5:41234' -> 'ipv4:10.0.0.5' (the port differs per connection)."""
    head, sep, tail = peer.rpartition(":")
    return head if sep and tail.isdigit() and head.count(":") >= 1 else peer


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """`await awaitable`, or TimeoutError after `seconds` (asyncio.timeout where there is one:
    it creates no task per message, as wait_for does)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # pragma: no cover - Python 3.10


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: SmpError) -> NoReturn:
    await context.abort(CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
    raise AssertionError("unreachable")  # context.abort raises


class Gate:
    """Admission, time limits and refusals for every peer call."""

    def __init__(self, authorize: Callable[[str, str], None], limits: PeerLimits) -> None:
        self._authorize = authorize  # (job id, token) -> None, or raises Unauthenticated
        self.limits = limits
        self._active: dict[str, int] = {}
        self.throttle = LogThrottle(logger, limits.log_interval_s)

    def credentials(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str, str]:
        metadata = {str(k): str(v) for k, v in (context.invocation_metadata() or ())}
        return metadata.get(PEER_JOB_KEY, ""), metadata.get(PEER_TOKEN_KEY, "")

    def authenticated(self, context: grpc.aio.ServicerContext[Any, Any], job_id: str) -> bool:
        job, token = self.credentials(context)
        try:
            self._authorize(job, token)
        except SmpError:
            return False
        return job == job_id

    @asynccontextmanager
    async def call(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> AsyncIterator[str]:
        """Admit the call (yielding its authenticated job id) and run its body under its limits."""
        client = client_address(context.peer())
        job, token = self.credentials(context)
        try:
            self._authorize(job, token)  # a dict lookup and a compare: the loop may do it
        except SmpError as exc:
            self.throttle.warn(f"peer {client}", f"refused:{exc.code}", f"{method} refused: {exc}")
            await abort(context, exc)
        active = self._active.get(client, 0)
        if active >= self.limits.calls_per_client:
            self.throttle.warn(
                f"peer {client}", "busy", f"{method} refused: {active} calls in flight"
            )
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{active} peer calls from {client} in flight, the most this SMP serves at once "
                "(--peer-calls-per-client): retry later",
            )
        self._active[client] = active + 1
        remaining = context.time_remaining()
        limit = (
            self.limits.max_call_s if remaining is None else min(remaining, self.limits.max_call_s)
        )
        task = asyncio.current_task()
        expired = asyncio.Event()

        def expire() -> None:
            expired.set()
            if task is not None:
                task.cancel()

        timer = asyncio.get_running_loop().call_later(limit, expire)
        try:
            yield job
        except asyncio.CancelledError:
            if not expired.is_set():
                raise  # cancelled by the caller or by shutdown, not by the limit
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} ran past its {limit:.3g} s limit"
            )
        finally:
            timer.cancel()
            left = self._active.get(client, 1) - 1
            if left > 0:
                self._active[client] = left
            else:
                self._active.pop(client, None)

    @asynccontextmanager
    async def unary(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, message: Any
    ) -> AsyncIterator[tuple[str, Any]]:
        """`call`, for a call with one request: yields (job id, the request, parsed and naming
        the job its credentials are for)."""
        async with self.call(context, method) as job:
            try:
                request = self.parsed(context, message)
                self.check_job(job, request.job_id)
            except SmpError as exc:
                await abort(context, exc)
            yield job, request

    def check_job(self, job: str, named: str) -> None:
        if named != job:
            raise Unauthenticated(
                f"the call's message names job {named!r}, its credentials job {job!r}"
            )

    def parsed(self, context: grpc.aio.ServicerContext[Any, Any], message: M | Malformed) -> M:
        if isinstance(message, Malformed):
            client = client_address(context.peer())
            self.throttle.warn(
                f"peer {client}", "malformed", f"a {message.size}-byte message that does not parse"
            )
            raise BadRequest(
                f"malformed message ({message.size} bytes): {message.error}; is the peer "
                "the same ecsnap version?"
            )
        return message

    async def read(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> Message | Malformed | bytes | None:
        """The stream's next message (None at its end); cut after `idle_s` without one. A
        method without a deserializer gets the raw bytes."""
        try:
            message = await within(self.limits.idle_s, context.read())
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{method}: no message for {self.limits.idle_s:g} s: idle stream cut",
            )
        if isinstance(message, (Message, Malformed, bytes)):
            return message
        return None  # grpc.aio.EOF: the stream ended

    async def write(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, message: Message | bytes
    ) -> None:
        """Send one message (or its serialized bytes); a reader that takes none for `idle_s` is
        cut."""
        try:
            await within(self.limits.idle_s, context.write(message))
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{method}: the caller read nothing for {self.limits.idle_s:g} s: stream cut",
            )
