"""`smp launch` and `smp stop`: run a torchrun job next to a node's SMP, and stop an SMP.

`smp launch [launch options] [torchrun options] train.py [args]` makes sure an SMP serves the
node's socket (starting one, detached in its own session, if none answers), sets `ECSNAP_SOCKET`
and `ECSNAP_JOB`, and then *becomes* torchrun (exec): signals, exit status and torchrun's own
worker restarts behave exactly as with plain torchrun, and every restart, and every later
`smp launch` of the same command, finds the same SMP with its snapshots.

The launch options come first; the first argument that is not one of them (or a `--`) starts
torchrun's command line. None of their names collides with a torchrun option.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from stat import S_ISREG, filemode

from smp import defaults, lifecycle, report, sockdir
from smp._proto import control_pb2 as pb
from smp.config import SETTINGS
from smp.errors import ConfigError
from smp.logs import tail

# Launch option -> `smp serve` flag it is handed to when this launch starts the SMP (from the
# settings schema).
SERVE_OPTIONS = {s.launch: s.flag for s in SETTINGS if s.launch is not None}
LAUNCH_OPTIONS = {"--socket", "--job", "--smp-log", "--smp-timeout", "--torchrun", *SERVE_OPTIONS}
LAUNCH_FLAGS = {"--fresh"}  # launch options that take no value

# torchrun options that take no value (every other option takes one).
_TORCHRUN_FLAGS = {
    "--standalone",
    "-m",
    "--module",
    "--no-python",
    "--no_python",
    "--run-path",
    "--run_path",
    "--virtual-local-rank",
    "--virtual_local_rank",
}
_JOB_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

# Starts the SMP in a new session and exits at once, so the SMP is nobody's child (init, or the
# nearest subreaper, reaps it): the trainer, torchrun and this launcher may all go away. The log
# is the file descriptor argv[1], opened (and checked) by the launcher.
_DETACH = (
    "import subprocess, sys\n"
    "log = int(sys.argv[1])\n"
    "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, "
    "stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)\n"
    "print(p.pid)\n"
)


class LaunchError(Exception):
    """The launcher cannot do what was asked; the message says why and what to do."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smp launch",
        usage="smp launch [launch options] [--] [torchrun options] SCRIPT [script args]",
        description="Start this node's SMP if none serves the socket (detached: it outlives the "
        "job), then run torchrun with ECSNAP_SOCKET and ECSNAP_JOB set. Launch options come "
        "first; everything from the first other argument on is torchrun's command line.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--socket",
        help="the SMP's control socket (env SMP_SOCKET or ECSNAP_SOCKET; default "
        f"{defaults.default_socket()})",
    )
    p.add_argument(
        "--job",
        help="ecsnap job id (env ECSNAP_JOB; default: torchrun's --rdzv-id, else derived from "
        "the training script and its arguments, so the same command finds its snapshots)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="train from the start: forget the job's snapshots on this node's SMP first (a job "
        "that finished, closed with finished=True, is refused without it)",
    )
    p.add_argument(
        "--smp-log", help="log file of an SMP this launch starts (default: beside the socket)"
    )
    p.add_argument(
        "--smp-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for a started SMP to answer (default 60)",
    )
    p.add_argument(
        "--torchrun",
        help="launcher command (default: `python -m torch.distributed.run` when this Python has "
        "torch, else `torchrun` from PATH)",
    )
    g = p.add_argument_group("settings of an SMP this launch starts (ignored if one is running)")
    for s in SETTINGS:
        if s.launch is not None:
            g.add_argument(
                s.launch,
                dest=s.name,
                choices=s.choices,
                help=f"`smp serve {s.flag}`: {s.help}",
            )
    return p


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(launch options, torchrun's command line): launch options stop at the first other argument
    or at `--`."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return list(argv[:i]), list(argv[i + 1 :])
        if arg in ("-h", "--help"):
            return [arg], []
        name = arg.split("=", 1)[0]
        if arg in LAUNCH_FLAGS:
            i += 1
            continue
        if name not in LAUNCH_OPTIONS:
            break
        i += 1 if "=" in arg else 2  # every other launch option takes a value
    return list(argv[:i]), list(argv[i:])


def script_index(torchrun_args: Sequence[str]) -> int | None:
    """Where torchrun's training script (or module, with -m) is in its command line."""
    i = 0
    while i < len(torchrun_args):
        arg = torchrun_args[i]
        if arg == "--":
            return i + 1 if i + 1 < len(torchrun_args) else None
        if not arg.startswith("-") or arg == "-":
            return i
        if arg in _TORCHRUN_FLAGS or "=" in arg or re.fullmatch(r"-[a-z]\S+", arg):
            i += 1  # a flag, --opt=value, or a short option with its value attached (-t3)
        else:
            i += 2
    return None


def _option_value(args: Sequence[str], *names: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def job_id_for(explicit: str | None, env: Mapping[str, str], torchrun_args: Sequence[str]) -> str:
    """The job id every launch of this command agrees on (on every node, and after relaunches).

    `--job`, else `$ECSNAP_JOB`, else torchrun's `--rdzv-id` (what the ranks would see as
    TORCHELASTIC_RUN_ID), else `<script>-<hash of the script and its arguments>`: torchrun's
    `--standalone` picks a new random run id each time, which would orphan the snapshots.
    """
    job = explicit or env.get(defaults.ENV_JOB)
    if not job:
        rdzv = _option_value(torchrun_args, "--rdzv-id", "--rdzv_id")
        if rdzv and rdzv != "none" and "--standalone" not in torchrun_args:
            job = rdzv
    if not job:
        at = script_index(torchrun_args)
        if at is None:
            raise LaunchError(
                "cannot find the training script in the torchrun command line; name the job "
                "with --job"
            )
        script = torchrun_args[at]
        name = Path(script).name  # a script's file name, or a module (-m pkg.train)
        name = name[:-3] if name.endswith(".py") else name
        stem = _JOB_CHARS.sub("-", name).strip("-._") or "job"
        digest = hashlib.sha256("\0".join(torchrun_args[at:]).encode()).hexdigest()[:8]
        job = f"{stem[:100]}-{digest}"
    try:
        return defaults.check_job_id(job)
    except defaults.InvalidJobId as exc:
        raise LaunchError(f"{exc} (--job)") from None


def torchrun_command(explicit: str | None) -> list[str]:
    if explicit:
        return shlex.split(explicit)
    if importlib.util.find_spec("torch") is not None:
        return [sys.executable, "-m", "torch.distributed.run"]
    found = shutil.which("torchrun")
    if found is None:
        raise LaunchError(
            "torchrun not found: install torch in this environment, or name the launcher with "
            "--torchrun"
        )
    return [found]


def alive(pid: int) -> bool:
    """The process exists here and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def open_private(path: Path, what: str) -> int:
    """A descriptor for appending to `path` (created 0600), which must be a regular file of this
    user: never through a symlink (O_NOFOLLOW), never a FIFO or device."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LaunchError(
                f"the {what} {path} is a symlink (to {os.readlink(path)}): refusing to write "
                "through it; remove it (someone may have planted it to make this launch "
                "overwrite another file)"
            ) from None
        raise LaunchError(f"cannot open the {what} {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise LaunchError(
            f"the {what} {path} is not a regular file of this user ({filemode(st.st_mode)}, "
            f"owner uid {st.st_uid}): remove it"
        )
    os.set_blocking(fd, True)
    return fd


def ensure_smp(
    socket: str, serve_args: Sequence[str], log: Path, timeout_s: float
) -> tuple[pb.StatusResponse, bool]:
    """The status of the SMP serving `socket`, starting one if none answers; (status, started).

    A lock file beside the socket makes concurrent launches on one node start one SMP only. The
    socket's directory (which holds the lock) and the log's are checked first
    (`sockdir.ensure_private_dir`): only this user may be able to write them.
    """
    sockdir.ensure_private_dir(Path(socket).parent)
    sockdir.ensure_private_dir(log.parent, what=sockdir.LOG)
    lock = open_private(Path(f"{socket}.lock"), "lock file")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = report.served(socket, 1.0)
        if status is not None:
            return status, False
        cmd = [sys.executable, "-m", "smp", "serve", "--socket", socket, *serve_args]
        log_fd = open_private(log, "SMP log")
        try:
            out = subprocess.run(
                [sys.executable, "-c", _DETACH, str(log_fd), *cmd],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                pass_fds=(log_fd,),
            )
        finally:
            os.close(log_fd)
        if out.returncode != 0 or not out.stdout.strip().isdigit():
            raise LaunchError(f"could not start the SMP ({shlex.join(cmd)}): {out.stderr.strip()}")
        pid = int(out.stdout)
        deadline = time.monotonic() + timeout_s
        while True:
            status = report.served(socket, 0.5)
            if status is not None:
                return status, True
            if not alive(pid):
                raise LaunchError(
                    f"the SMP (pid {pid}) exited before serving {socket}; its log {log}:\n"
                    f"{tail(log)}"
                )
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"the SMP (pid {pid}) did not answer on {socket} within {timeout_s:g}s; its "
                    f"log {log}:\n{tail(log)}"
                )
            time.sleep(0.1)
    finally:
        os.close(lock)  # releases the lock


def launch(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """`smp launch ...`: returns only on an error (on success this process becomes torchrun)."""
    env = dict(os.environ if env is None else env)
    ours, torchrun_args = split_argv(argv)
    parser = build_parser()
    args = parser.parse_args(ours)
    if not torchrun_args:
        parser.error("nothing to run: give torchrun's options and the training script")
    socket = defaults.socket_from(args.socket, env)
    if len(socket.encode()) > defaults.MAX_SOCKET_PATH:
        raise ConfigError(
            f"socket path {socket!r} is longer than {defaults.MAX_SOCKET_PATH} bytes: choose a "
            "shorter one"
        )
    job = job_id_for(args.job, env, torchrun_args)
    command = [*torchrun_command(args.torchrun), *torchrun_args]
    serve_args: list[str] = []
    for s in SETTINGS:
        value = getattr(args, s.name, None) if s.launch is not None else None
        if value is not None:
            serve_args += [s.flag, str(value)]
    log = Path(args.smp_log) if args.smp_log else Path(socket).parent / "smp.log"
    status, started = ensure_smp(socket, serve_args, log, args.smp_timeout)
    try:
        done = lifecycle.check(status, job, socket, args.fresh)
    except lifecycle.FinishedJob as exc:
        raise LaunchError(str(exc)) from None
    if done:
        print(f"smp launch: {done}", file=sys.stderr, flush=True)
    how = (
        f"started SMP pid {status.pid} (log {log})" if started else f"reusing SMP pid {status.pid}"
    )
    print(
        f"smp launch: {how} on {socket}, gRPC {status.grpc_address}; job {job}",
        file=sys.stderr,
        flush=True,
    )
    env[defaults.ENV_SOCKET] = socket
    env[defaults.ENV_JOB] = job
    # torchrun's c10d rendezvous shares its store with the workers' process group, and after a
    # restart a worker can read the previous attempt's addresses from it and wait forever
    # (pytorch/pytorch#135712): restarts are what this launcher is for, so keep them apart.
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        raise LaunchError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    return 1  # unreachable: exec does not return


def _is_smp(pid: int) -> bool | None:
    """Is `pid` an `smp serve` process here? None when /proc cannot tell."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return None
    return b"serve" in cmdline and any(b"smp" in part for part in cmdline)


def stop(socket: str, timeout_s: float) -> int:
    """`smp stop`: SIGTERM the SMP serving `socket` and wait until it has shut down in order."""
    status = report.served(socket, 2.0)
    if status is None:
        print(f"smp stop: no SMP is serving {socket}; nothing to stop", file=sys.stderr)
        return 0
    pid = status.pid
    if _is_smp(pid) is False:
        print(
            f"smp stop: the SMP on {socket} reports pid {pid}, which is not an `smp serve` "
            "process here (another PID namespace?): stop it where it runs",
            file=sys.stderr,
        )
        return 2
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        print(f"smp stop: not allowed to signal pid {pid}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            print(
                f"smp stop: SMP pid {pid} still running after {timeout_s:g}s "
                f"(`kill -9 {pid}` ends it without an orderly shutdown)",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.05)
    print(f"smp stop: stopped SMP pid {pid} on {socket}", file=sys.stderr)
    return 0
