"""What the durable tier does for a job, and where that comes from.

Each setting is the Snapshotter's argument, else its environment variable, else (target, every
and keep only) what the node's SMP offers its jobs (`smp serve --persist-to DIR`: the job then
persists to DIR/<job id>):

- persist_to (ECSNAP_PERSIST_TO): a directory (local disk, NFS, Lustre: one all nodes see) or an
  fsspec URL (s3://..., with the filesystem's package installed); unset everywhere: off;
- persist_every (ECSNAP_PERSIST_EVERY): persist when a save crosses a multiple of N steps
  (default 100);
- persist_seconds (ECSNAP_PERSIST_SECONDS): also persist when T seconds passed since the last;
- persist_keep (ECSNAP_PERSIST_KEEP): complete steps kept (default 3, at least 1);
- persist_keep_every (ECSNAP_PERSIST_KEEP_EVERY): also keep every step that is a multiple of M;
- persist_bandwidth (ECSNAP_PERSIST_BANDWIDTH): cap on each rank's write rate (500M, 1G).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from smp.pacing import parse_rate

DEFAULT_EVERY = 100
DEFAULT_KEEP = 3


@dataclass(frozen=True)
class PersistPolicy:
    target: str
    every: int | None = DEFAULT_EVERY
    seconds: float | None = None
    keep: int = DEFAULT_KEEP
    keep_every: int | None = None
    bandwidth: float | None = None  # bytes/s per rank; None: unlimited

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("persist_to is empty: give a directory or an fsspec URL")
        if self.every is not None and self.every < 1:
            raise ValueError(f"persist_every={self.every}: give a number of steps >= 1")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"persist_seconds={self.seconds}: give a positive number of seconds")
        if self.every is None and self.seconds is None:
            raise ValueError("persist_every and persist_seconds are both off: nothing persists")
        if self.keep < 1:
            raise ValueError(f"persist_keep={self.keep}: at least the newest step must be kept")
        if self.keep_every is not None and self.keep_every < 1:
            raise ValueError(f"persist_keep_every={self.keep_every}: give a number of steps >= 1")

    def due(self, step: int, last_step: int | None, since_s: float) -> bool:
        """Is `step` to be persisted, the last persisted (or tried) step being `last_step` (None:
        none yet), `since_s` seconds ago (or since the job started)? A step that crosses a
        multiple of `every` is due (so a skipped save does not lose the interval), and so is
        any step once `seconds` have passed."""
        if last_step is not None and step <= last_step:
            return False
        if self.every is not None:
            if last_step is None:
                crossed = step > 0 and step % self.every == 0
            else:
                crossed = step // self.every > last_step // self.every
            if crossed:
                return True
        return self.seconds is not None and since_s >= self.seconds

    def retired(self, complete: list[int]) -> list[int]:
        """The complete steps retention deletes: all but the newest `keep` and the multiples of
        `keep_every`. Called only after the newest of them is complete."""
        newest_first = sorted(complete, reverse=True)
        kept = set(newest_first[: self.keep])
        if self.keep_every:
            kept.update(s for s in complete if s % self.keep_every == 0)
        return sorted(s for s in complete if s not in kept)


@dataclass(frozen=True)
class PersistSettings:
    """The Snapshotter's persist_* arguments as given (None: not given)."""

    target: str | os.PathLike[str] | None = None
    every: int | None = None
    seconds: float | None = None
    keep: int | None = None
    keep_every: int | None = None
    bandwidth: str | float | None = None  # as given; bytes/s once resolved


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"environment variable {name}={raw!r} is not {what}") from None


def resolve(
    given: PersistSettings, env: Mapping[str, str] | None = None
) -> tuple[PersistPolicy | None, PersistSettings]:
    """The policy from the arguments and the environment (None: no target there), and the
    settings that were given (to fill in from an SMP's offer later, `offered`). Raises
    ValueError for a bad value."""
    env = os.environ if env is None else env
    target = given.target if given.target is not None else env.get("ECSNAP_PERSIST_TO", "")
    every = given.every if given.every is not None else _number(env, "ECSNAP_PERSIST_EVERY", int)
    secs = given.seconds
    if secs is None:
        secs = _number(env, "ECSNAP_PERSIST_SECONDS", float)
    keep = given.keep if given.keep is not None else _number(env, "ECSNAP_PERSIST_KEEP", int)
    thin: float | None = given.keep_every
    if thin is None:
        thin = _number(env, "ECSNAP_PERSIST_KEEP_EVERY", int)
    cap = given.bandwidth if given.bandwidth is not None else env.get("ECSNAP_PERSIST_BANDWIDTH")
    settings = PersistSettings(
        os.fspath(target).strip() or None,
        int(every) if every is not None else None,
        float(secs) if secs is not None else None,
        int(keep) if keep is not None else None,
        int(thin) if thin else None,
        parse_rate(cap) if isinstance(cap, str) else (float(cap) if cap else None),
    )
    # Checked even without a target: a bad persist_every is an error at once.
    policy = _policy(str(settings.target or "-"), settings, DEFAULT_EVERY, DEFAULT_KEEP)
    return (policy if settings.target else None), settings


def _policy(target: str, s: PersistSettings, every: int, keep: int) -> PersistPolicy:
    """`s` over the defaults `every` and `keep` (bandwidth already in bytes/s)."""
    return PersistPolicy(
        target,
        s.every if s.every is not None else (None if s.seconds else every),
        s.seconds,
        s.keep if s.keep is not None else keep,
        s.keep_every,
        float(s.bandwidth) if s.bandwidth else None,
    )


def offered(
    policy: PersistPolicy | None,
    settings: PersistSettings,
    job_id: str,
    smp_target: str,
    smp_every: int,
    smp_keep: int,
) -> PersistPolicy | None:
    """The job's policy once its SMP said what it offers: the job's own where it has one, else
    the SMP's target (per job) with the job's own settings over the SMP's."""
    if policy is not None or not smp_target:
        return policy
    target = f"{smp_target.rstrip('/')}/{job_id}"
    return _policy(target, settings, smp_every or DEFAULT_EVERY, smp_keep or DEFAULT_KEEP)
