"""The Snapshotter's durable tier: its policy, decided once the job meets its SMPs, and the
background persister that carries it out."""

from __future__ import annotations

from ecsnap.durable.persister import Persister
from ecsnap.durable.policy import PersistPolicy, PersistSettings, offered, resolve
from ecsnap.durable.store import Store
from ecsnap.errors import EcsnapError
from ecsnap.handle import SaveHandle
from ecsnap.pins import Pins
from ecsnap.session import Session


class DurableTier:
    def __init__(self, session: Session, pins: Pins, given: PersistSettings) -> None:
        """Raises ValueError for a bad setting (argument or environment)."""
        self._session = session
        self._pins = pins
        self._policy, self._settings = resolve(given)
        self._decided = False
        self.persister: Persister | None = None

    @property
    def policy(self) -> PersistPolicy | None:
        return self.persister.policy if self.persister is not None else self._policy

    @property
    def store(self) -> Store | None:
        return self.persister.store if self.persister is not None else None

    def join(self) -> None:
        """Collective, after the session joined (its SMP's offer is known): settle the policy
        (the job's own, else its SMP's) and start the persister. Every rank must persist to the
        same place, or none: an EcsnapError on every rank otherwise."""
        if self._decided:
            return
        s = self._session
        info = s.info
        policy = offered(
            self._policy,
            self._settings,
            s.job_id,
            info.persist_to if info else "",
            info.persist_every if info else 0,
            info.persist_keep if info else 0,
        )
        target = policy.target if policy is not None else ""
        targets = sorted({t for t in s.all_gather(target)})
        if len(targets) > 1:
            raise EcsnapError(
                f"the job's ranks persist to different places ({', '.join(map(repr, targets))}): "
                "give every rank the same persist_to / ECSNAP_PERSIST_TO, or the same "
                "`smp serve --persist-to` on every node"
            )
        self._decided = True
        if policy is not None:
            self.persister = Persister(s, self._pins, policy, s.job_id)
            self.persister.start()

    def submit(self, handle: SaveHandle) -> None:
        if self.persister is not None:
            self.persister.submit(handle)

    @property
    def persisted(self) -> int | None:
        return self.persister.persisted if self.persister is not None else None

    def close(self, timeout: float) -> None:
        if self.persister is not None:
            self.persister.close(timeout)
