"""Real SMP processes for tests and local clusters (torch-free: the daemon's own tests use it).

`LocalSMP` is one simulated node's SMP: its own socket, store directory (on tmpfs when there is
one) and gRPC port. Every wait is bounded; `close()` stops it and frees its memory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from smp.logs import tail
from smp.report import served


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalSMP:
    """One node's SMP: its own socket, store directory and gRPC port."""

    root: Path
    memory_limit: str = "2G"
    extra_args: tuple[str, ...] = ()  # more `smp serve` options, e.g. ("--metrics-port", "0")
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    store_dir: str = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "smp.log"
        # Like a real node, arenas live on tmpfs when there is one; logs and socket under root.
        shm = Path("/dev/shm")
        base = Path(tempfile.mkdtemp(prefix="ecsnap-store-", dir=shm)) if shm.is_dir() else None
        self.store_dir = str(base if base is not None else self.root / "store")

    @property
    def socket(self) -> str:
        return str(self.root / "smp.sock")

    def start(self, timeout: float = 30.0) -> LocalSMP:
        cmd = [
            sys.executable,
            "-m",
            "smp",
            "serve",
            "--socket",
            self.socket,
            "--store-dir",
            self.store_dir,
            "--port",
            "0",
            "--memory-limit",
            self.memory_limit,
            *self.extra_args,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while served(self.socket, 0.2) is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SMP exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"SMP did not answer within {timeout}s:\n{self.tail()}")
        return self

    def memory(self) -> dict[str, int]:
        """The running SMP's VmRSS and VmHWM (peak), in bytes; empty when it is not running."""
        out: dict[str, int] = {}
        if self.proc is None:
            return out
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return out
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
        return out

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the running SMP used so far; 0.0 when it is not running."""
        if self.proc is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 30) -> str:
        return tail(self.log, lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code, self.proc = self.proc.returncode, None
        return code

    def wipe(self) -> None:
        """Lose this node's memory: what a machine failure does to its tmpfs."""
        shutil.rmtree(self.store_dir, ignore_errors=True)

    def close(self) -> None:
        """Stop the daemon and free its memory."""
        self.stop()
        self.wipe()


def short_tmpdir(prefix: str = "ecsnap-") -> Path:
    """Unix socket paths must stay short: keep work dirs directly under /tmp."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
