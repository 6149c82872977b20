"""`smp status` rendering: the table (single- and multi-node jobs), JSON, and health addresses."""

from __future__ import annotations

import json

from smp import report
from smp._proto import control_pb2 as pb


def sample_status() -> pb.StatusResponse:
    st = pb.StatusResponse(
        version="0.1.0",
        pid=42,
        socket="/tmp/x/smp.sock",
        store_dir="/dev/shm/ecsnap-1000",
        grpc_address="node3:7470",
        memory_limit=2 << 30,
        memory_used=80 << 20,
        store_free=10 << 30,
        codec_engine="isal: ISA-L",
        uptime_s=17,
    )
    single = st.jobs.add(
        job_id="train-1n",
        world_size=2,
        num_nodes=1,
        has_committed=True,
        committed_step=39,
        committed_age_s=8,
        bytes=40 << 20,
        protection="1 node: no parity (the loss of the node is not covered)",
    )
    for rank in (0, 1):
        r = single.ranks.add(rank=rank, local_rank=rank, pid=100 + rank, bytes=20 << 20)
        r.slots.add(slot=0, state=pb.COMPLETE, step=38)
        r.slots.add(slot=1, state=pb.WRITING, step=40)
    multi = st.jobs.add(
        job_id="train-4n",
        world_size=8,
        num_nodes=4,
        bytes=50 << 20,
        node_rank=2,
        parity_bytes=10 << 20,
        has_protected=True,
        protected_step=12,
        protection="4 nodes in 1 group of 4 (3 data + 1 parity): survives the loss of 1 node",
        last_error="rank 5: commit timed out",
    )
    multi.group_members.extend([0, 1, 2, 3])
    for rank in (4, 5):
        r = multi.ranks.add(rank=rank, local_rank=rank - 4, pid=200 + rank, bytes=20 << 20)
        r.slots.add(slot=0, state=pb.EMPTY)
    return st


def test_table_shows_jobs_ranks_cluster_and_protection() -> None:
    text = report.render(sample_status(), "SERVING")
    lines = text.splitlines()
    assert lines[0] == "SMP 0.1.0  pid 42  up 17s"
    assert "  gRPC      node3:7470  (health: SERVING)" in lines
    assert "80.0 MiB used of 2.0 GiB limit" in text
    row = next(line for line in lines if line.strip().startswith("train-1n"))
    assert row.split() == ["train-1n", "2/2", "1", "39", "8s", "40.0", "MiB"]
    assert "rank 0    pid 100      s0:complete@38  s1:writing@40" in text
    assert "protects against: 1 node: no parity (the loss of the node is not covered)" in text
    # the single-node job has no cluster line; the multi-node one has node, group, parity, step
    assert text.count("node 2 of 4") == 1
    cluster = next(line for line in lines if "node 2 of 4" in line).strip().split("   ")
    assert cluster == [
        "node 2 of 4",
        "group nodes 0,1,2,3",
        "parity held 10.0 MiB",
        "protected step 12",
    ]
    row = next(line for line in lines if line.strip().startswith("train-4n"))
    assert row.split()[:5] == ["train-4n", "2/8", "4", "-", "-"]
    assert "last error: rank 5: commit timed out" in text


def test_table_without_jobs_or_health() -> None:
    st = pb.StatusResponse(version="0.1.0", grpc_address="127.0.0.1:1")
    text = report.render(st)
    assert "(health" not in text and text.endswith("  no jobs")


def test_json_has_every_field_and_the_health() -> None:
    data = json.loads(report.to_json(sample_status(), "SERVING"))
    assert data["grpc_health"] == "SERVING"
    multi = data["jobs"][1]
    assert multi["group_members"] == [0, 1, 2, 3] and multi["node_rank"] == 2
    assert multi["protected_step"] == "12" and multi["has_committed"] is False
    assert data["jobs"][0]["ranks"][0]["slots"][1]["state"] == "WRITING"


def test_wildcard_addresses_are_dialed_on_loopback() -> None:
    assert report.dialable("0.0.0.0:7470") == "127.0.0.1:7470"
    assert report.dialable("[::]:7470") == "[::1]:7470"
    assert report.dialable("node3.cluster:7470") == "node3.cluster:7470"


def test_health_of_a_closed_port_is_unreachable() -> None:
    import socket

    with socket.socket() as s:  # a port that nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert report.check_health(f"127.0.0.1:{port}", 1.0).startswith("UNREACHABLE")
    assert report.check_health("", 1.0).startswith("UNKNOWN")
