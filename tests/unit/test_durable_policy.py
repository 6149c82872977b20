"""The durable tier's policy: when a step is due, what retention keeps, where settings come from."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from ecsnap.durable.policy import PersistPolicy, PersistSettings, offered, resolve


def test_a_step_is_due_when_it_crosses_a_multiple_of_every() -> None:
    p = PersistPolicy("/x", every=10)
    assert not p.due(0, None, 0.0)
    assert not p.due(9, None, 0.0)
    assert p.due(10, None, 0.0)
    assert not p.due(15, 10, 0.0)
    assert p.due(21, 10, 0.0)  # step 20 was skipped: 21 still crosses it
    assert not p.due(10, 10, 0.0)  # never the same step twice


def test_seconds_make_any_step_due_once_they_passed() -> None:
    p = PersistPolicy("/x", every=None, seconds=60.0)
    assert not p.due(3, None, 59.0)
    assert p.due(3, None, 60.0)
    assert PersistPolicy("/x", every=1000, seconds=5.0).due(7, 6, 5.5)


def test_retention_keeps_the_newest_and_every_mth() -> None:
    p = PersistPolicy("/x", keep=2, keep_every=100)
    assert p.retired([50, 100, 150, 200, 250]) == [50, 150]
    assert PersistPolicy("/x", keep=1).retired([3]) == []


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"every": 0}, "persist_every=0"),
        ({"seconds": -1.0}, "persist_seconds=-1.0"),
        ({"every": None}, "nothing persists"),
        ({"keep": 0}, "at least the newest"),
        ({"keep_every": 0}, "persist_keep_every=0"),
    ],
)
def test_bad_settings_say_what_is_wrong(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        PersistPolicy("/x", **kwargs)  # type: ignore[arg-type]


def test_arguments_win_over_the_environment() -> None:
    env = {"ECSNAP_PERSIST_TO": "/env", "ECSNAP_PERSIST_EVERY": "7", "ECSNAP_PERSIST_KEEP": "4"}
    policy, _ = resolve(PersistSettings(every=3), env)
    assert policy == PersistPolicy("/env", every=3, keep=4)
    policy, _ = resolve(PersistSettings(target="/arg", bandwidth="500M"), env)
    assert policy is not None and policy.target == "/arg" and policy.bandwidth == 500e6


def test_no_target_is_no_policy_but_bad_values_still_raise() -> None:
    assert resolve(PersistSettings(), {})[0] is None
    with pytest.raises(ValueError, match="ECSNAP_PERSIST_EVERY='often' is not an integer"):
        resolve(PersistSettings(), {"ECSNAP_PERSIST_EVERY": "often"})
    with pytest.raises(ValueError, match="persist_every=0"):
        resolve(PersistSettings(every=0), {})
    with pytest.raises(ValueError, match="not understood"):
        resolve(PersistSettings(target="/x", bandwidth="fast"), {})


def test_the_smps_offer_applies_only_where_the_job_chose_nothing() -> None:
    own, settings = resolve(PersistSettings(target="/mine"), {})
    assert offered(own, settings, "job", "/smp", 50, 2) is own
    none, settings = resolve(PersistSettings(keep=5), {})
    assert offered(none, settings, "job", "", 50, 2) is None
    got = offered(none, settings, "job", "/smp/", 50, 2)
    assert got == PersistPolicy("/smp/job", every=50, keep=5)
