"""Daemon settings: sizes, precedence (defaults < env < flags), validation; env of a rank."""

from __future__ import annotations

import pytest

from ecsnap.env import RankEnv, job_id_from, socket_from
from smp.config import ServeConfig, format_size, parse_size
from smp.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1024", 1024),
        ("4K", 4096),
        ("1.5G", 3 << 29),
        ("8GiB", 8 << 30),
        ("2m", 2 << 20),
        ("1T", 1 << 40),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="cannot read 'lots'"):
        parse_size("lots")


def test_format_size() -> None:
    assert format_size(512) == "512 B" and format_size(3 << 29) == "1.5 GiB"


def test_precedence_flags_over_env_over_defaults() -> None:
    env = {"SMP_PORT": "7000", "SMP_MEMORY_LIMIT": "1G", "SMP_SOCKET": "/tmp/env.sock"}
    cfg = ServeConfig.from_sources({"port": 7001, "socket": None}, env)
    assert cfg.port == 7001 and cfg.memory_limit == 1 << 30 and cfg.socket == "/tmp/env.sock"
    assert ServeConfig.from_sources({}, {}).port == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"port": 70000}, "out of range"),
        ({"socket": "/tmp/" + "x" * 120}, "at most 107"),
        ({"memory_limit": "0"}, "must be positive"),
        ({"codec": "fast"}, "unknown"),
    ],
)
def test_invalid_settings_are_explained(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServeConfig.from_sources(flags, {})


def test_rank_env_from_torchrun_variables() -> None:
    env = RankEnv.from_environ(
        {
            "RANK": "5",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "1",
        }
    )
    assert (env.rank, env.local_rank, env.node_rank, env.num_nodes) == (5, 1, 1, 2)
    assert RankEnv.from_environ({}).world_size == 1
    with pytest.raises(ValueError, match="RANK=9"):
        RankEnv.from_environ({"RANK": "9", "WORLD_SIZE": "2"})


def test_job_and_socket_precedence() -> None:
    assert job_id_from(None, {"TORCHELASTIC_RUN_ID": "te", "ECSNAP_JOB": "mine"}) == "mine"
    assert job_id_from(None, {"TORCHELASTIC_RUN_ID": "te"}) == "te"
    assert job_id_from("explicit", {"ECSNAP_JOB": "mine"}) == "explicit"
    assert job_id_from(None, {}) == "default"
    assert socket_from(None, {"ECSNAP_SOCKET": "/s"}) == "/s"
