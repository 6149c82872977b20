"""Settings of one `smp serve` process: a frozen, validated dataclass.

Precedence, lowest first: built-in defaults < `SMP_*` environment variables < command-line flags.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from smp import defaults
from smp.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
# Longest path a Unix socket accepts (sun_path is 108 bytes including the terminating NUL).
MAX_SOCKET_PATH = 107


def parse_size(text: str) -> int:
    """Parse "512M", "8GiB", "1.5G" or "1048576" into bytes (K/M/G are powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(
            f"cannot read {text!r} as a size; use a number with K, M, G or T, e.g. 8G"
        )
    return int(float(m.group(1)) * (1024 ** _UNITS[m.group(2).lower()]))


def format_size(n: int | float) -> str:
    """Human-readable bytes, binary units ("1.5 GiB")."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@dataclass(frozen=True)
class ServeConfig:
    socket: str = field(default_factory=defaults.default_socket)
    store_dir: str = field(default_factory=defaults.default_store_dir)
    host: str = "127.0.0.1"
    port: int = 0
    memory_limit: int | None = None  # None: the free space of the store's filesystem at start
    codec: str = "auto"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if len(self.socket.encode()) > MAX_SOCKET_PATH:
            raise ConfigError(
                f"socket path {self.socket!r} is {len(self.socket.encode())} bytes; Unix sockets "
                f"allow at most {MAX_SOCKET_PATH}: choose a shorter --socket"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is out of range 0..65535 (0 picks a free port)")
        if self.memory_limit is not None and self.memory_limit <= 0:
            raise ConfigError(f"--memory-limit must be positive, got {self.memory_limit}")
        if self.codec not in ("auto", "isal", "numpy"):
            raise ConfigError(f"--codec {self.codec!r} is unknown; use auto, isal or numpy")

    @classmethod
    def from_sources(
        cls, flags: Mapping[str, object | None], env: Mapping[str, str] | None = None
    ) -> ServeConfig:
        """Merge environment and flags (flags win; a flag left at None falls through)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        from_env = {
            "socket": defaults.ENV_SMP_SOCKET,
            "store_dir": defaults.ENV_SMP_STORE_DIR,
            "host": defaults.ENV_SMP_HOST,
            "port": defaults.ENV_SMP_PORT,
            "memory_limit": defaults.ENV_SMP_MEMORY_LIMIT,
            "codec": defaults.ENV_SMP_CODEC,
            "log_level": defaults.ENV_SMP_LOG_LEVEL,
        }
        for key, var in from_env.items():
            if env.get(var):
                values[key] = env[var]
        for key, value in flags.items():
            if value is not None and key in from_env:
                values[key] = value
        if "port" in values:
            try:
                values["port"] = int(str(values["port"]))
            except ValueError:
                raise ConfigError(f"port {values['port']!r} is not a number") from None
        if "memory_limit" in values and isinstance(values["memory_limit"], str):
            values["memory_limit"] = parse_size(values["memory_limit"])
        return cls(**values)  # type: ignore[arg-type]
