"""Daemon settings: sizes, config files, precedence (defaults < file < env < flags), validation."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from smp.config import ENVIRONMENT, ServeConfig, format_size, parse_size
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


# -- config file (TOML or YAML), its place in the precedence, new settings ---------------------


def test_config_file_toml_and_yaml_give_the_same_settings(tmp_path: Path) -> None:
    toml = tmp_path / "smp.toml"
    toml.write_text('memory_limit = "2G"\nport = 7470\nmetrics-port = 9470\nlog_format = "json"\n')
    yaml = tmp_path / "smp.yaml"
    yaml.write_text("memory-limit: 2G\nport: 7470\nmetrics_port: 9470\nlog-format: json\n")
    a = ServeConfig.from_sources({"config": str(toml)}, {})
    b = ServeConfig.from_sources({"config": str(yaml)}, {})
    assert a == b
    assert (a.memory_limit, a.port, a.metrics_port, a.log_format) == (2 << 30, 7470, 9470, "json")


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "smp.yaml"
    cfg.write_text("port: 1000\nmemory_limit: 1G\ncodec: numpy\nhost: 0.0.0.0\n")
    env = {"SMP_CONFIG": str(cfg), "SMP_PORT": "2000", "SMP_MEMORY_LIMIT": "2G"}
    merged = ServeConfig.from_sources({"port": 3000, "memory_limit": None}, env)
    assert merged.port == 3000  # flag > env > file
    assert merged.memory_limit == 2 << 30  # env > file
    assert (merged.codec, merged.host) == ("numpy", "0.0.0.0")  # file > default
    assert merged.log_level == "INFO" and merged.metrics_port is None  # defaults
    # --config names the file even when $SMP_CONFIG names another
    other = tmp_path / "other.toml"
    other.write_text("port = 4000\n")
    assert ServeConfig.from_sources({"config": str(other)}, {"SMP_CONFIG": str(cfg)}).port == 4000


def test_metrics_host_defaults_to_the_grpc_host() -> None:
    cfg = ServeConfig.from_sources({"host": "0.0.0.0", "metrics_port": 0}, {})
    assert (cfg.metrics_port, cfg.metrics_bind) == (0, "0.0.0.0")
    env = {"SMP_METRICS_HOST": "127.0.0.1", "SMP_METRICS_PORT": "9470"}
    cfg = ServeConfig.from_sources({"host": "0.0.0.0"}, env)
    assert (cfg.metrics_port, cfg.metrics_bind) == (9470, "127.0.0.1")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("smp.toml", "memory_limt = '1G'\n", "unknown setting 'memory_limt'"),
        ("smp.toml", "port = \n", "not valid TOML"),
        ("smp.yaml", "port: [1, 2]\n", "needs a single value"),
        ("smp.yaml", "- port\n", "must hold a table"),
        ("smp.yaml", "port: seventy\n", "not a number"),
        ("smp.yaml", "metrics_port: 70000\n", "out of range"),
        ("smp.yaml", "log_format: xml\n", "text or json"),
        ("smp.yaml", "log_level: LOUD\n", "unknown"),
        ("smp.yaml", "memory_limit: true\n", "cannot be True"),
        ("smp.ini", "port=1\n", "name it"),
    ],
)
def test_config_file_errors_name_the_problem(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        ServeConfig.from_sources({"config": str(path)}, {})


def test_missing_config_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        ServeConfig.from_sources({}, {"SMP_CONFIG": str(tmp_path / "absent.toml")})


def test_every_setting_has_an_environment_variable() -> None:
    names = {f.name for f in fields(ServeConfig)}
    assert set(ENVIRONMENT) == names
    assert all(var.startswith("SMP_") for var in ENVIRONMENT.values())
