"""Jobs on one shared SMP are kept apart by their job keys (a real `smp serve`): another job id's
process can neither read a job's snapshot, nor commit forged steps into it, nor re-configure it;
it cannot even tell that the job exists; the binding survives an SMP restart."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecsnap.control import ControlClient, Grant
from ecsnap.errors import SnapshotError
from smp import report
from smp._proto import control_pb2 as pb
from smp._proto import snapshot_pb2
from smp.testing import LocalSMP

pytestmark = pytest.mark.timeout(120)

KEY = b"victim-key-0123456789abcdef"
OTHER = b"attacker-key-0123456789abcdef"
PAYLOAD = b"the victim's weights" * 100


def client(smp: LocalSMP, job: str, key: bytes) -> ControlClient:
    return ControlClient(smp.socket, job, 10.0, job_key=key)


def register(c: ControlClient) -> None:
    c.register(0, 1, 0, 1, 0, 1, os.getpid(), "host")


def save(c: ControlClient, step: int, data: bytes) -> None:
    grant = c.begin_save(0, step, len(data))
    with open(grant.path, "r+b") as f, mmap.mmap(f.fileno(), grant.capacity) as m:
        m[: len(data)] = data
    c.commit_save(0, step, grant, len(data), snapshot_pb2.Manifest().SerializeToString())
    assert c.wait_committed(step, 10_000, 15.0).committed


def refusal(call: object) -> str:
    assert callable(call)
    with pytest.raises(SnapshotError) as info:
        call()
    return f"{info.value.code}: {info.value}".replace("'victim'", "'X'").replace("'nobody'", "'X'")


@pytest.fixture
def smp(workdir: Path) -> Iterator[LocalSMP]:
    node = LocalSMP(workdir / "node", memory_limit="64M").start()
    try:
        yield node
    finally:
        node.close()


def test_another_job_cannot_read_forge_or_reconfigure(smp: LocalSMP) -> None:
    victim = client(smp, "victim", KEY)
    register(victim)
    save(victim, 1, PAYLOAD)
    for key in (OTHER, b""):  # another key, or none at all
        thief = client(smp, "victim", key)
        with pytest.raises(SnapshotError, match="taken on this SMP by a job with another job key"):
            register(thief)
        # Whatever it asks, the answer is the one a job that does not exist gets.
        nobody = client(smp, "nobody", key)
        calls = {
            "list": lambda c: c.list_steps(0),
            "open": lambda c: c.open_snapshot(0, 1),
            "begin": lambda c: c.begin_save(0, 2, 64),
            "commit": lambda c: c.commit_save(0, 2, Grant(0, 1, "", 64), 64, b""),
            "locate": lambda c: c.locate(),
            "forget": lambda c: c.forget(),
            "configure": lambda c: c.configure(0, 2, 2, 1, "consecutive", ["a:1", "b:1"], OTHER),
        }
        for name, call in calls.items():
            theirs = refusal(lambda call=call, c=thief: call(c))
            assert "NOT_REGISTERED" in theirs, name
            assert theirs == refusal(lambda call=call, c=nobody: call(c)), name
    # The victim's snapshot is intact and only its own key reads it.
    opened = victim.open_snapshot(0, 1)
    with open(opened.path, "rb") as f:
        assert f.read(len(PAYLOAD)) == PAYLOAD
    assert victim.list_steps(0).committed == 1


def test_status_shows_a_job_only_its_own_job_or_the_owner(smp: LocalSMP) -> None:
    for job, key in (("victim", KEY), ("other", OTHER)):
        register(client(smp, job, key))

    def ask(job: str, key: bytes) -> pb.StatusResponse:
        return client(smp, job, key)._channel.call("status", pb.StatusRequest()).status

    mine = ask("other", OTHER)
    assert [j.job_id for j in mine.jobs] == ["other"] and mine.jobs_hidden
    assert not ask("victim", OTHER).jobs  # a wrong key sees nothing, not even the job
    everything = report.fetch_status(smp.socket)  # the owner's admin token, read by smp status
    assert {j.job_id for j in everything.jobs} == {"victim", "other"}
    assert not everything.jobs_hidden


def test_the_binding_survives_an_smp_restart(smp: LocalSMP) -> None:
    victim = client(smp, "victim", KEY)
    register(victim)
    save(victim, 1, PAYLOAD)
    victim.close()
    smp.stop()
    smp.start()
    with pytest.raises(SnapshotError, match="another job key"):
        register(client(smp, "victim", OTHER))
    again = client(smp, "victim", KEY)
    register(again)
    assert again.list_steps(0).committed == 1


def test_an_smp_that_requires_keys_refuses_keyless_jobs(workdir: Path) -> None:
    node = LocalSMP(workdir / "strict", memory_limit="64M", extra_args=("--require-job-key",))
    node.start()
    try:
        with pytest.raises(SnapshotError, match="registered without a job key") as info:
            register(client(node, "keyless", b""))
        assert info.value.code == "UNAUTHENTICATED"
        register(client(node, "keyed", KEY))
        with pytest.raises(SnapshotError, match="16 to 4096 bytes"):
            register(client(node, "short", b"0123"))
    finally:
        node.close()


def test_settings_the_codec_cannot_serve_are_a_bad_request(smp: LocalSMP) -> None:
    job = client(smp, "wide", KEY)
    job.register(0, 300, 0, 1, 0, 300, os.getpid(), "host")
    for group, parity, words in ((300, 1, "2 to 255 nodes"), (4, 4, "below the group size")):
        with pytest.raises(SnapshotError, match=words) as info:
            job.configure(0, 300, group, parity, "consecutive", ["a:1"] * 300, OTHER)
        assert info.value.code == "BAD_REQUEST"
    assert "consecutive" in job.configure(0, 300, 100, 2, "consecutive", ["a:1"] * 300, OTHER)
