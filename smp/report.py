"""`smp status`: ask a running SMP for its state, check its gRPC health, render a table or JSON.

Liveness has two parts: the control socket answers a status request (local trainers can reach the
SMP), and the standard `grpc.health.v1` service on the peer port says SERVING (peers can).
"""

from __future__ import annotations

import json
import os

import grpc
import zmq
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from smp._proto import control_pb2 as pb
from smp.access import admin_token_path, read_admin_token
from smp.config import format_size
from smp.sockdir import check_socket_dir
from smp.tls import PeerTls, open_channel


class NotAnswering(Exception):
    """The SMP did not answer on its socket."""


def _ask(
    socket_path: str, request: pb.Request, timeout_s: float, token_file: str | None = None
) -> pb.Response:
    """One request on a fresh socket (the daemon's own commands; trainers use ecsnap's client),
    as the SMP's owner: with its admin token (`token_file`, default beside the socket) when this
    process can read it."""
    # UnsafeDirectory (a ConfigError) if another user controls it; never connect unchecked.
    if not check_socket_dir(socket_path):
        raise NotAnswering(
            f"no SMP answered on {socket_path}: there is no socket there; is `smp serve` running "
            "with this --socket (or $SMP_SOCKET / $ECSNAP_SOCKET)?"
        )
    request.admin_token = read_admin_token(admin_token_path(socket_path, token_file))
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{socket_path}")
        sock.send(request.SerializeToString())
        if not sock.poll(int(timeout_s * 1000)):
            raise NotAnswering(
                f"no SMP answered on {socket_path} within {timeout_s:g}s: is `smp serve` running "
                "with this --socket (or $SMP_SOCKET / $ECSNAP_SOCKET)?"
            )
        resp = pb.Response()
        resp.ParseFromString(sock.recv())
        if resp.HasField("error"):
            raise NotAnswering(f"the SMP on {socket_path} refused: {resp.error.message}")
        return resp
    finally:
        sock.close(linger=0)


def fetch_status(
    socket_path: str, timeout_s: float = 3.0, token_file: str | None = None
) -> pb.StatusResponse:
    """The SMP's status: every job when this process may read the SMP's admin token
    (`token_file`, default beside the socket), else the SMP's own state only (`smp.access`)."""
    request = pb.Request(request_id=1, status=pb.StatusRequest())
    return _ask(socket_path, request, timeout_s, token_file).status


def served(socket_path: str, timeout_s: float = 0.5) -> pb.StatusResponse | None:
    """The status of the SMP serving `socket_path`, or None when none answers (liveness).
    Raises UnsafeDirectory when the socket's directory exists but another user controls it."""
    check_socket_dir(socket_path)
    if not os.path.exists(socket_path):
        return None
    try:
        return fetch_status(socket_path, timeout_s)
    except NotAnswering:
        return None


def forget(
    socket_path: str, job_id: str, timeout_s: float = 30.0, token_file: str | None = None
) -> int:
    """Ask the SMP to forget a job (as its owner: the admin token); the bytes it freed."""
    request = pb.Request(request_id=1, job_id=job_id, forget=pb.ForgetRequest())
    return int(_ask(socket_path, request, timeout_s, token_file).forget.freed_bytes)


SERVING = "SERVING"


def dialable(address: str) -> str:
    """A wildcard bind address (0.0.0.0, [::]) is dialed on loopback."""
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", ""):
        return f"127.0.0.1:{port}"
    if host in ("[::]", "::"):
        return f"[::1]:{port}"
    return address


def check_health(address: str, timeout_s: float = 3.0, tls: PeerTls | None = None) -> str:
    """The SMP's gRPC health (overall service ""): SERVING, NOT_SERVING, ... or UNREACHABLE.
    With the peer service on mutual TLS, `tls` is a certificate the SMP accepts."""
    if not address:
        return "UNKNOWN (no gRPC address)"
    with open_channel(dialable(address), tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return f"UNREACHABLE ({code.name if code is not None else exc})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def to_json(status: pb.StatusResponse, health: str | None = None) -> str:
    data = MessageToDict(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    if health is not None:
        data["grpc_health"] = health
    return json.dumps(data, indent=2, sort_keys=True)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _cluster_line(job: pb.JobStatus) -> str | None:
    """Where this node stands in a multi-node job: its node rank, group, parity, protected step."""
    if job.num_nodes <= 1 and not job.group_members:
        return None
    parts = [f"node {job.node_rank} of {job.num_nodes}"]
    if job.group_members:
        parts.append("group nodes " + ",".join(str(n) for n in job.group_members))
    parts.append(f"parity held {format_size(job.parity_bytes)}")
    parts.append(f"protected step {job.protected_step if job.has_protected else '-'}")
    return "      " + "   ".join(parts)


def _persist_lines(job: pb.JobStatus) -> list[str]:
    """The job's durable tier: its newest persisted step, the lag behind the committed one, the
    write rate; a failing store loudly."""
    if not job.persist_target:
        return []
    if job.has_persisted:
        lag = job.committed_step - job.persisted_step if job.has_committed else 0
        rate = f", {job.persist_bytes_per_s / 1e6:.0f} MB/s" if job.persist_bytes_per_s else ""
        line = (
            f"      persisted step {job.persisted_step} (lag {max(lag, 0)} steps, "
            f"{_age(job.persisted_age_s)} ago{rate}) to {job.persist_target}"
        )
    else:
        line = f"      persisted: nothing yet, to {job.persist_target}"
    lines = [line]
    if job.persist_error:
        lines.append(
            f"      PERSIST FAILING ({job.persist_failures} failed rounds so far): "
            f"{job.persist_error}"
        )
    return lines


def render(status: pb.StatusResponse, health: str | None = None) -> str:
    grpc_line = f"  gRPC      {status.grpc_address}"
    if health is not None:
        grpc_line += f"  (health: {health})"
    lines = [
        f"SMP {status.version}  pid {status.pid}  up {_age(status.uptime_s)}",
        f"  control   ipc://{status.socket}",
        grpc_line,
        f"  store     {status.store_dir}  ({format_size(status.store_free)} free)",
        f"  memory    {format_size(status.memory_used)} used of {format_size(status.memory_limit)}"
        f" limit",
        f"  codec     {status.codec_engine}",
    ]
    if status.jobs_hidden:
        lines.append(
            "  jobs      not shown: the SMP's admin token (--admin-token-file, readable by the "
            "SMP's owner) lists them"
        )
    if not status.jobs:
        lines.append("  no jobs" if not status.jobs_hidden else "")
        return "\n".join(lines).rstrip()
    lines.append("")
    header = f"  {'JOB':<24} {'RANKS':>9} {'NODES':>5} {'COMMITTED':>9} {'AGE':>6} {'MEMORY':>11}"
    lines.append(header)
    for job in status.jobs:
        committed = str(job.committed_step) if job.has_committed else "-"
        age = _age(job.committed_age_s) if job.has_committed else "-"
        ranks = f"{len(job.ranks)}/{job.world_size or '?'}"
        lines.append(
            f"  {job.job_id:<24} {ranks:>9} {job.num_nodes:>5} {committed:>9} "
            f"{age:>6} {format_size(job.bytes):>11}"
        )
        for rank in job.ranks:
            slots = "  ".join(
                f"s{s.slot}:{pb.SlotState.Name(s.state).lower()}"
                + (f"@{s.step}" if s.state != pb.EMPTY else "")
                for s in rank.slots
            )
            lines.append(f"      rank {rank.rank:<4} pid {rank.pid:<8} {slots}")
        cluster = _cluster_line(job)
        if cluster is not None:
            lines.append(cluster)
        lines.extend(_persist_lines(job))
        lines.append(f"      protects against: {job.protection}")
        if job.degraded:
            lines.append(f"      DEGRADED: {job.degraded}")
        if job.last_error:
            lines.append(f"      last error: {job.last_error}")
    return "\n".join(lines)
