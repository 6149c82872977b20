"""Settings of one `smp serve` process: a frozen, validated dataclass.

Precedence, lowest first: built-in defaults < config file (`--config FILE` or `$SMP_CONFIG`, TOML
or YAML) < `SMP_*` environment variables < command-line flags. A setting left unset at one level
falls through to the level below.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from smp import defaults
from smp.access import admin_token_path
from smp.defaults import MAX_SOCKET_PATH
from smp.errors import ConfigError
from smp.pacing import parse_rate

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CODECS = ("auto", "isal", "numpy")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Setting:
    """One daemon setting. Its name is the ServeConfig field and the config-file key
    (`store_dir` or `store-dir`); its flag is `--store-dir`; `launch` is the `smp launch`
    option that hands it to an SMP the launcher starts (None: launch does not pass it)."""

    name: str
    env: str
    help: str
    # "str", "int", "size" (8G), "seconds", "rate" (500M bytes/s), "bool" (a flag without a value)
    kind: str = "str"
    choices: tuple[str, ...] | None = None
    launch: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# The one schema: `smp serve`'s flags, the environment names, the config-file keys and `smp
# launch`'s pass-through are all derived from it.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "config",
        "SMP_CONFIG",
        "settings file, TOML (*.toml) or YAML (*.yaml) with these "
        "settings' names as keys; precedence: defaults < file < environment < flags",
        launch="--config",
    ),
    Setting(
        "socket",
        defaults.ENV_SMP_SOCKET,
        "control socket path (default /tmp/ecsnap-<uid>/smp.sock)",
    ),
    Setting(
        "store_dir",
        "SMP_STORE_DIR",
        "arena directory, ideally tmpfs (default /dev/shm/ecsnap-<uid>)",
        launch="--store-dir",
    ),
    Setting("host", "SMP_HOST", "gRPC bind address (default 127.0.0.1)", launch="--smp-host"),
    Setting("port", "SMP_PORT", "gRPC port, 0 = any free (default 0)", "int", launch="--smp-port"),
    Setting(
        "memory_limit",
        "SMP_MEMORY_LIMIT",
        "max arena bytes, e.g. 64G (default: the store's free space)",
        "size",
        launch="--memory-limit",
    ),
    Setting(
        "codec",
        "SMP_CODEC",
        "erasure-coding engine (default auto)",
        choices=CODECS,
        launch="--codec",
    ),
    Setting(
        "log_level", "SMP_LOG_LEVEL", "DEBUG, INFO, WARNING (default INFO)", launch="--log-level"
    ),
    Setting(
        "log_format",
        "SMP_LOG_FORMAT",
        "json: one object per line with job, rank, step fields (default text)",
        choices=LOG_FORMATS,
        launch="--log-format",
    ),
    Setting(
        "metrics_port",
        "SMP_METRICS_PORT",
        "serve Prometheus metrics on this port, 0 = any free (default: no metrics endpoint)",
        "int",
        launch="--metrics-port",
    ),
    Setting(
        "metrics_host",
        "SMP_METRICS_HOST",
        "metrics bind address (default: the --host address)",
        launch="--metrics-host",
    ),
    Setting(
        "tls_cert",
        "SMP_TLS_CERT",
        "mutual TLS on the peer port: this SMP's certificate, "
        "PEM (all three of --tls-cert, --tls-key, --tls-ca, or none)",
        launch="--tls-cert",
    ),
    Setting(
        "tls_key", "SMP_TLS_KEY", "mutual TLS: this SMP's private key, PEM", launch="--tls-key"
    ),
    Setting("tls_ca", "SMP_TLS_CA", "mutual TLS: the CA's certificate, PEM", launch="--tls-ca"),
    Setting(
        "job_ttl",
        "SMP_JOB_TTL",
        "forget a job (free its snapshots) after this many "
        "seconds without a request from it (default: never)",
        "seconds",
        launch="--job-ttl",
    ),
    Setting(
        "require_job_key",
        "SMP_REQUIRE_JOB_KEY",
        "refuse jobs that register without a job key (ECSNAP_JOB_KEY): for an SMP "
        "shared by several jobs (default: keyless jobs are accepted, with a warning)",
        "bool",
    ),
    Setting(
        "admin_token_file",
        "SMP_ADMIN_TOKEN_FILE",
        "where the SMP writes its admin token (owner-only), which `smp status` and `smp "
        "forget` present to see and act for every job (default: <socket>.admin; put it outside "
        "any directory trainers of other jobs can read)",
    ),
    Setting(
        "peer_idle_timeout",
        "SMP_PEER_IDLE_TIMEOUT",
        "cut a peer stream that moves no message for this many seconds (default 30)",
        "seconds",
    ),
    Setting(
        "peer_calls_per_client",
        "SMP_PEER_CALLS_PER_CLIENT",
        "most peer calls served at once for one client address (default 64)",
        "int",
    ),
    Setting(
        "parity_bandwidth",
        "SMP_PARITY_BANDWIDTH",
        "cap on the parity bytes this SMP sends per second, all jobs and peers together, e.g. "
        "500M or 2G (decimal; 500MiB for binary), for networks the training shares "
        "(default: unlimited)",
        "rate",
        launch="--parity-bandwidth",
    ),
    Setting(
        "persist_to",
        "SMP_PERSIST_TO",
        "durable tier for every job of this SMP that chooses none itself: a directory (local "
        "disk, NFS, Lustre; shared by the job's nodes) or an fsspec URL; a job persists to "
        "<it>/<job id> (default: none)",
        launch="--persist-to",
    ),
    Setting(
        "persist_every",
        "SMP_PERSIST_EVERY",
        "with --persist-to: persist a job's committed snapshot every N steps (default 100)",
        "int",
        launch="--persist-every",
    ),
    Setting(
        "persist_keep",
        "SMP_PERSIST_KEEP",
        "with --persist-to: the persisted steps kept per job (default 3)",
        "int",
        launch="--persist-keep",
    ),
)
SETTING = {s.name: s for s in SETTINGS}
ENV_SMP_CONFIG = SETTING["config"].env
ENV_SMP_TLS = {k: SETTING[k].env for k in ("tls_cert", "tls_key", "tls_ca")}
# Setting name -> environment variable (the file itself is not a setting of the file).
ENVIRONMENT = {s.name: s.env for s in SETTINGS if s.name != "config"}


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
    log_format: str = "text"  # or "json": one object per line, with job, rank, step fields
    metrics_port: int | None = None  # None: no Prometheus endpoint; 0: any free port
    metrics_host: str = ""  # "": the same address as --host
    tls_cert: str = ""  # PEM files: mutual TLS on the peer port (all three, or none)
    tls_key: str = ""
    tls_ca: str = ""
    job_ttl: float | None = None  # seconds without a request after which a job is forgotten
    require_job_key: bool = False
    admin_token_file: str = ""  # "": <socket>.admin
    peer_idle_timeout: float = 30.0
    peer_calls_per_client: int = 64
    parity_bandwidth: float | None = None  # bytes/s of parity sent; None: unlimited
    persist_to: str = ""  # the durable tier offered to jobs that choose none ("": none)
    persist_every: int = 100
    persist_keep: int = 3

    def __post_init__(self) -> None:
        if self.job_ttl is not None and self.job_ttl <= 0:
            raise ConfigError(f"--job-ttl must be a positive number of seconds, got {self.job_ttl}")
        if len(self.socket.encode()) > MAX_SOCKET_PATH:
            raise ConfigError(
                f"socket path {self.socket!r} is {len(self.socket.encode())} bytes; Unix sockets "
                f"allow at most {MAX_SOCKET_PATH}: choose a shorter --socket"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is out of range 0..65535 (0 picks a free port)")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"--metrics-port {self.metrics_port} is out of range 0..65535 (0 picks a free port)"
            )
        if self.memory_limit is not None and self.memory_limit <= 0:
            raise ConfigError(f"--memory-limit must be positive, got {self.memory_limit}")
        if self.codec not in CODECS:
            raise ConfigError(f"--codec {self.codec!r} is unknown; use auto, isal or numpy")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"--log-level {self.log_level!r} is unknown; use one of {', '.join(_LOG_LEVELS)}"
            )
        if self.peer_idle_timeout <= 0:
            raise ConfigError(
                f"--peer-idle-timeout must be a positive number of seconds, "
                f"got {self.peer_idle_timeout}"
            )
        if self.peer_calls_per_client < 1:
            raise ConfigError(
                f"--peer-calls-per-client must be at least 1, got {self.peer_calls_per_client}"
            )
        if self.persist_every < 1:
            raise ConfigError(f"--persist-every must be at least 1 step, got {self.persist_every}")
        if self.persist_keep < 1:
            raise ConfigError(
                f"--persist-keep must be at least 1 (the newest step), got {self.persist_keep}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"--log-format {self.log_format!r} is unknown; use text or json")

    @property
    def admin_token_path(self) -> Path:
        return admin_token_path(self.socket, self.admin_token_file or None)

    @property
    def metrics_bind(self) -> str:
        return self.metrics_host or self.host

    @classmethod
    def from_sources(
        cls, flags: Mapping[str, object | None], env: Mapping[str, str] | None = None
    ) -> ServeConfig:
        """Merge config file, environment and flags (flags win; None falls through).

        The file is `flags["config"]`, else `$SMP_CONFIG`; none is read when both are unset.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        config_file = flags.get("config") or env.get(ENV_SMP_CONFIG)
        if config_file:
            values.update(load_file(str(config_file)))
        for key, var in ENVIRONMENT.items():
            if env.get(var):
                values[key] = env[var]
        for key, value in flags.items():
            if value is not None and key in ENVIRONMENT:
                values[key] = value
        return cls(**_typed(values))


def load_file(path: str) -> dict[str, object]:
    """Settings from a TOML (`.toml`) or YAML (`.yaml`, `.yml`) file: a flat table whose keys are
    the setting names (`memory_limit` or `memory-limit`)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    suffix = p.suffix.lower()
    data: Any
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        data = {} if data is None else data
    else:
        raise ConfigError(
            f"config file {path}: name it *.toml or *.yaml (*.yml) so its format is known"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings, not {type(data)}")
    known = {f.name for f in fields(ServeConfig)}
    values: dict[str, object] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            names = ", ".join(sorted(known))
            raise ConfigError(f"config file {path}: unknown setting {raw_key!r}; known: {names}")
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"config file {path}: {raw_key} needs a single value, got {value!r}")
        values[key] = value
    return values


def _typed(values: dict[str, object]) -> dict[str, Any]:
    """Turn strings from files, the environment and flags into the dataclass's field types."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = SETTING[key].kind
        if kind == "bool":
            out[key] = _flag(key, value)
            continue
        if isinstance(value, bool):
            raise ConfigError(f"{key} cannot be {value!r}")
        try:
            if kind == "int":
                out[key] = int(str(value))
            elif kind == "seconds":
                out[key] = float(str(value))
            elif kind == "size":
                out[key] = value if isinstance(value, int) else parse_size(str(value))
            elif kind == "rate":
                out[key] = parse_rate(str(value))
            else:
                out[key] = str(value)
        except ValueError as exc:
            detail = str(exc) if kind == "rate" else f"{key} {value!r} is not a number"
            raise ConfigError(detail) from None
    return out


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _flag(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{key} {value!r} is not a yes/no value: use true or false")
