"""Staging: fetch one rank's snapshot from the SMP of another node into this one.

A job whose nodes were renumbered (or resized) finds its snapshots where they are: a rank asks its
own SMP to stage the slot it needs from the node that holds it (`Locate` tells which). The slot is
written straight into a fresh arena and installed like a local save, so its checksums are verified
before any rank reads it.
"""

from __future__ import annotations

import time

import grpc

from smp.errors import BadRequest, PeerUnavailable
from smp.local import LocalSnapshots
from smp.peerclient import PeerClient
from smp.wire import WireError


def fetch_slot(
    client: PeerClient,
    local: LocalSnapshots,
    job_id: str,
    rank: int,
    step: int,
    source_node: int,
    timeout: float,
) -> tuple[int, float]:
    """Stream `rank`'s slot of `step` from node `source_node`; (bytes fetched, seconds)."""
    started = time.perf_counter()
    try:
        record, pieces = client.fetch_slot(job_id, rank, step, timeout)
    except (grpc.RpcError, WireError) as exc:
        raise PeerUnavailable(
            f"node {source_node} sent no record of rank {rank}, step {step}: {exc}"
        ) from exc
    target = local.install_targets(job_id, step, [record])[0]
    at, ok = 0, False
    try:
        for piece in pieces:
            if at + len(piece) > len(target):
                raise BadRequest(f"node {source_node} sent more than the {len(target)} bytes")
            target[at : at + len(piece)] = piece
            at += len(piece)
        ok = at == len(target)
    except (grpc.RpcError, WireError) as exc:
        raise PeerUnavailable(f"fetching rank {rank} from node {source_node}: {exc}") from exc
    finally:
        local.finish_install(job_id, step, [record], ok)
    if not ok:
        raise PeerUnavailable(f"node {source_node} sent {at} of {len(target)} bytes")
    return at, time.perf_counter() - started
