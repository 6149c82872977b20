"""Where this process sits in the job: torchrun's environment, ecsnap's own variables.

Precedence: explicit constructor arguments < nothing else; absent arguments come from
$ECSNAP_JOB / $TORCHELASTIC_RUN_ID and $ECSNAP_SOCKET, then the documented defaults.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from smp import defaults
from smp.layout import Layout, LayoutError, check_redundancy


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class RankEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    restart_count: int = 0
    hostname: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} is not within WORLD_SIZE={self.world_size}")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(
                f"LOCAL_RANK={self.local_rank} is not within "
                f"LOCAL_WORLD_SIZE={self.local_world_size}"
            )

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> RankEnv:
        env = os.environ if env is None else env
        rank = _int(env, "RANK", 0)
        world = _int(env, "WORLD_SIZE", 1)
        local_world = _int(env, "LOCAL_WORLD_SIZE", 1 if "RANK" not in env else world)
        local_rank = _int(env, "LOCAL_RANK", rank % max(local_world, 1))
        node = _int(env, "GROUP_RANK", rank // max(local_world, 1))
        nodes = max(1, -(-world // max(local_world, 1)))
        return cls(
            rank,
            world,
            local_rank,
            local_world,
            node,
            nodes,
            _int(env, "TORCHELASTIC_RESTART_COUNT", 0),
            socket.gethostname(),
        )


def job_id_from(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    job = explicit or env.get(defaults.ENV_JOB) or env.get("TORCHELASTIC_RUN_ID") or "default"
    try:
        return defaults.check_job_id(job)
    except defaults.InvalidJobId as exc:
        raise ValueError(
            f"{exc} (the job_id argument, $ECSNAP_JOB or $TORCHELASTIC_RUN_ID)"
        ) from None


def drawn_run_id(job_id: str, env: Mapping[str, str] | None = None) -> bool:
    """The job id is a run id torchrun drew at random: `torchrun --standalone` draws a new one
    (a UUID) at every launch, so a relaunch looks for another job's snapshots."""
    env = os.environ if env is None else env
    if env.get(defaults.ENV_JOB) or env.get("TORCHELASTIC_RUN_ID") != job_id:
        return False
    try:
        uuid.UUID(job_id)
    except ValueError:
        return False
    return True


def socket_from(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """The node's SMP socket: the argument, else $SMP_SOCKET, else $ECSNAP_SOCKET, else the
    default (the resolution every ecsnap command uses)."""
    return defaults.socket_from(explicit, env)


JOB_KEY_MIN = 16


def job_key_from(explicit: str | bytes | None, env: Mapping[str, str] | None = None) -> bytes:
    """The job's key on its SMPs: the argument, else $ECSNAP_JOB_KEY, else the contents of
    $ECSNAP_JOB_KEY_FILE (stripped), else none (b""). Every rank and every incarnation of a job
    must use the same key; the first registration binds the job id to it."""
    env = os.environ if env is None else env
    where = "job_key"
    key: str | bytes = b""
    if explicit is not None:
        key = explicit
    elif env.get(defaults.ENV_JOB_KEY):
        key, where = env[defaults.ENV_JOB_KEY], defaults.ENV_JOB_KEY
    elif env.get(defaults.ENV_JOB_KEY_FILE):
        path = env[defaults.ENV_JOB_KEY_FILE]
        where = f"{defaults.ENV_JOB_KEY_FILE}={path}"
        try:
            with open(path, "rb") as f:
                key = f.read().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the job key file {path}: {exc.strerror}") from None
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if raw and len(raw) < JOB_KEY_MIN:
        raise ValueError(
            f"the job key ({where}) has {len(raw)} bytes; use at least {JOB_KEY_MIN}, e.g. "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return raw


def layout_from(
    num_nodes: int,
    group_size: int | None,
    parity: int | None,
    placement: str | None,
    env: Mapping[str, str] | None = None,
) -> Layout:
    """The job's redundancy: arguments, else $ECSNAP_GROUP_SIZE (4, capped by the node count),
    $ECSNAP_PARITY (1) and $ECSNAP_PLACEMENT (consecutive). Invalid settings raise ValueError."""
    env = os.environ if env is None else env
    g = (
        group_size
        if group_size is not None
        else _int(env, defaults.ENV_GROUP_SIZE, defaults.DEFAULT_GROUP_SIZE)
    )
    m = parity if parity is not None else _int(env, defaults.ENV_PARITY, defaults.DEFAULT_PARITY)
    where = placement or env.get(defaults.ENV_PLACEMENT) or "consecutive"
    try:
        check_redundancy(g, m)  # refused here, on every node count, not at the first save
        return Layout.for_job(num_nodes, g, m, where)
    except LayoutError as exc:
        raise ValueError(f"invalid ecsnap redundancy settings: {exc}") from None
