"""Fuzzing a live SMP's control socket and peer service, next to a real job it serves.

Cases are drawn with hypothesis: raw bytes, and well-formed messages of every kind whose fields
take any value of their type (edge values first), sent with no credentials, a wrong key, or the
fuzzing job's own credentials (so the deep paths run too). The properties: every case is answered
(or refused) and the SMP keeps serving; its memory does not grow beyond its arena limit; the real
job's committed snapshot stays byte for byte what it saved, and the job still commits.

Used by the tests (a few hundred cases) and by `smp bench fuzz` (10,000 and more). Needs
hypothesis (the `dev` extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import zmq
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as use_seed
from hypothesis import strategies as st

from smp._proto import control_pb2 as pb
from smp._proto import peer_pb2

FUZZ_JOB = "fuzz-job"
FUZZ_KEY = b"fuzz-job-key-0123456789abcdef"
_INTS = {
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_ENUM: (0, 40),
}
_SMALL = st.sampled_from([0, 1, 2, 3, 7, 255, 256, 65535])


def _scalar(f: FieldDescriptor, job_ids: list[str]) -> st.SearchStrategy[Any]:
    if f.type in _INTS:
        lo, hi = _INTS[f.type]
        edges = st.sampled_from(sorted({lo, hi, max(lo, -1), 0, 1}))
        return st.one_of(_SMALL, edges, st.integers(lo, hi))
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True)
    if f.type == FieldDescriptor.TYPE_STRING:
        named = st.sampled_from([*job_ids, "", "../../etc", "a" * 300, "127.0.0.1:1"])
        return st.one_of(named, st.text(max_size=24))
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=48)
    raise AssertionError(f"no strategy for field {f.full_name}")


def messages(
    d: Any, cls: type[Message], job_ids: list[str], depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of type `cls` with any subset of fields set to any value of their type."""
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for f in d.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2:
                continue
            sub_cls = message_factory.GetMessageClass(f.message_type)
            sub = messages(f.message_type, sub_cls, job_ids, depth + 1)
            value: st.SearchStrategy[Any] = sub
        else:
            value = _scalar(f, job_ids)
        repeated = f.is_repeated
        parts[f.name] = st.lists(value, max_size=3) if repeated else value
    chosen = st.fixed_dictionaries({}, optional=parts)

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        for name, value in values.items():
            if isinstance(value, list):
                container = getattr(msg, name)
                for item in value:
                    if isinstance(item, Message):
                        container.add().CopyFrom(item)
                    else:
                        container.append(item)
            elif isinstance(value, Message):
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return chosen.map(build)


def _mangled(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` with one byte flipped, and maybe cut short there."""

    def mangle(at: int, flip: int, cut: bool) -> bytes:
        if not data:
            return bytes([flip])
        changed = data[:at] + bytes([data[at] ^ flip]) + data[at + 1 :]
        return changed[: at + 1] if cut else changed

    return st.builds(
        mangle, st.integers(0, max(len(data) - 1, 0)), st.integers(1, 255), st.booleans()
    )


@dataclass(frozen=True)
class Credentials:
    """What the fuzzer may present: the fuzzing job's (its own, to go deep) and the real job's id
    with wrong keys; never the real job's key or secret."""

    real_job: str
    peer_secret: bytes  # the fuzzing job's peer secret (configured on the SMP under test)


def control_cases(creds: Credentials) -> st.SearchStrategy[list[bytes]]:
    jobs = [FUZZ_JOB, creds.real_job]
    request = messages(pb.Request.DESCRIPTOR, pb.Request, jobs)
    keyed = st.tuples(request, st.sampled_from([FUZZ_KEY, b"", b"wrong-key-0123456789"])).map(
        lambda t: _with_key(t[0], t[1])
    )
    # Deep cases: one body of each kind, as the fuzzing job itself (admitted), any field values.
    deep = st.sampled_from(_bodies()).flatmap(
        lambda kind: messages(kind[1], message_factory.GetMessageClass(kind[1]), jobs).map(
            lambda body: _request(kind[0], body)
        )
    )
    one = st.one_of(
        st.binary(max_size=96),
        deep.map(lambda m: m.SerializeToString()),
        deep.map(lambda m: m.SerializeToString()),
        keyed.map(lambda m: m.SerializeToString()),
        keyed.flatmap(lambda m: _mangled(m.SerializeToString())),
    )
    frames = st.lists(st.binary(max_size=16), min_size=2, max_size=4)
    return st.one_of(one.map(lambda b: [b]), frames)


def _bodies() -> list[tuple[str, Any]]:
    """(name, descriptor) of every request body kind."""
    return [(f.name, f.message_type) for f in pb.Request.DESCRIPTOR.oneofs_by_name["body"].fields]


def _request(kind: str, body: Message) -> pb.Request:
    request = pb.Request(request_id=1, job_id=FUZZ_JOB, job_key=FUZZ_KEY)
    getattr(request, kind).CopyFrom(body)
    return request


def _with_key(request: Message, key: bytes) -> Message:
    assert isinstance(request, pb.Request)
    request.job_key = key
    return request


PEER_METHODS: dict[str, tuple[str, type[Message]]] = {
    "Info": ("unary", peer_pb2.InfoRequest),
    "PushChunk": ("stream_in", peer_pb2.PushChunkRequest),
    "Protected": ("unary", peer_pb2.ProtectedRequest),
    "StepFailed": ("unary", peer_pb2.StepFailedRequest),
    "JobState": ("unary", peer_pb2.JobStateRequest),
    "FetchCell": ("stream_out", peer_pb2.FetchCellRequest),
    "FetchSlot": ("stream_out", peer_pb2.FetchSlotRequest),
}


@dataclass(frozen=True)
class PeerCase:
    method: str
    payloads: list[bytes]
    metadata: tuple[tuple[str, str], ...]


def peer_cases(creds: Credentials) -> st.SearchStrategy[PeerCase]:
    from smp.peerclient import peer_metadata

    jobs = [FUZZ_JOB, creds.real_job]
    metadata = st.sampled_from(
        [
            (),
            peer_metadata(FUZZ_JOB, creds.peer_secret),
            peer_metadata(FUZZ_JOB, creds.peer_secret),
            peer_metadata(FUZZ_JOB, creds.peer_secret),
            peer_metadata(creds.real_job, b"w" * 32),
            peer_metadata(FUZZ_JOB, creds.peer_secret)[:1],
        ]
    )

    def payloads(cls: type[Message]) -> st.SearchStrategy[bytes]:
        valid = messages(cls.DESCRIPTOR, cls, jobs).map(lambda m: m.SerializeToString())
        return st.one_of(st.binary(max_size=96), valid, valid.flatmap(_mangled))

    return st.sampled_from(sorted(PEER_METHODS)).flatmap(
        lambda name: st.builds(
            PeerCase,
            st.just(name),
            st.lists(payloads(PEER_METHODS[name][1]), min_size=1, max_size=3),
            metadata,
        )
    )


WAITING = {"wait_committed", "rebuild", "stage", "open_snapshot"}  # may answer later
PROBE = (1 << 64) - 1  # request id of the status probe after a request that may wait


@dataclass
class Target:
    """The SMP under test: its control socket and peer address."""

    socket: str
    peer_address: str
    timeout_s: float = 10.0
    answered: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(f"ipc://{self.socket}")
        self._channel = grpc.insecure_channel(self.peer_address)

    def control(self, frames: list[bytes]) -> None:
        """Send one case; the SMP must answer it, or (a request that may wait: a commit, a
        rebuild, a stage) answer a status probe sent right after it. Late replies are drained."""
        self._sock.send_multipart(frames)
        if len(frames) != 1:
            return
        request = pb.Request()
        try:
            request.ParseFromString(frames[0])
            waits = request.WhichOneof("body") in WAITING
        except Exception:  # noqa: BLE001 - not a request: it must be refused at once
            waits = False
        if waits:
            probe = pb.Request(request_id=PROBE, status=pb.StatusRequest())
            self._sock.send(probe.SerializeToString())
        deadline = time.monotonic() + self.timeout_s
        while self._sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            reply = pb.Response()
            reply.ParseFromString(self._sock.recv())
            code = pb.ErrorCode.Name(reply.error.code) if reply.HasField("error") else "OK"
            self.answered[code] = self.answered.get(code, 0) + 1
            if not waits or reply.request_id == PROBE:
                return
        raise AssertionError(f"the SMP did not answer {frames!r} within {self.timeout_s} s")

    def peer(self, case: PeerCase) -> None:
        kind, _ = PEER_METHODS[case.method]
        path = f"/ecsnap.v1.Peer/{case.method}"
        c = self._channel
        try:
            if kind == "unary":
                c.unary_unary(path, None, None)(
                    case.payloads[0], timeout=self.timeout_s, metadata=case.metadata
                )
            elif kind == "stream_in":
                c.stream_unary(path, None, None)(
                    iter(case.payloads), timeout=self.timeout_s, metadata=case.metadata
                )
            else:
                for _ in c.unary_stream(path, None, None)(
                    case.payloads[0], timeout=self.timeout_s, metadata=case.metadata
                ):
                    pass
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise AssertionError(f"{case} got {code}: {exc.details()}") from None
        self.answered[code] = self.answered.get(code, 0) + 1

    def close(self) -> None:
        self._sock.close(linger=0)
        self._channel.close()


def run_cases(
    strategy: st.SearchStrategy[Any], send: Callable[[Any], None], cases: int, seed: int
) -> None:
    """Draw `cases` cases from `strategy` and `send` each (hypothesis drives and shrinks)."""

    @use_seed(seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        # A failing case is reported as drawn: shrinking would resend cases that time out.
        phases=[Phase.explicit, Phase.generate],
    )
    @given(strategy)
    def one(case: Any) -> None:
        send(case)

    one()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
