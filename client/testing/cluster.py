"""A local cluster of simulated nodes: one real SMP process per node, and the faults a real
cluster meets (a node lost with its memory, an SMP crash and restart, a frozen SMP)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from types import TracebackType

from smp.testing import LocalSMP


class LocalCluster:
    """`nodes` SMPs under `root` (each with its own socket, store and gRPC port)."""

    def __init__(
        self, root: Path, nodes: int, memory_limit: str = "512M", extra_args: tuple[str, ...] = ()
    ) -> None:
        self.root = root
        self.memory_limit = memory_limit
        self.extra_args = extra_args
        self.generation = 0
        self.smps = [self._smp(n).start() for n in range(nodes)]

    def _smp(self, node: int) -> LocalSMP:
        name = f"node{node}" if not self.generation else f"node{node}-{self.generation}"
        return LocalSMP(self.root / name, self.memory_limit, self.extra_args)

    @property
    def sockets(self) -> list[str]:
        return [s.socket for s in self.smps]

    def lose(self, *nodes: int) -> None:
        """The machines die (SMP killed, memory gone); fresh, empty SMPs take their places."""
        self.generation += 1
        for n in nodes:
            self.smps[n].stop(signal.SIGKILL)
            self.smps[n].wipe()
            self.smps[n] = self._smp(n).start()

    def restart(self, node: int) -> None:
        """The node's SMP crashes (SIGKILL) and is started again on its store, as systemd's
        Restart=on-failure does: its memory survives."""
        self.smps[node].stop(signal.SIGKILL)
        self.smps[node].start()

    def freeze(self, node: int) -> None:
        """The node's SMP stops answering (SIGSTOP) until `thaw`."""
        proc = self.smps[node].proc
        if proc is not None:
            os.kill(proc.pid, signal.SIGSTOP)

    def thaw(self, node: int) -> None:
        proc = self.smps[node].proc
        if proc is not None:
            os.kill(proc.pid, signal.SIGCONT)

    def close(self) -> None:
        for smp in self.smps:
            if smp.proc is not None:
                self.thaw(self.smps.index(smp))
            smp.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)
