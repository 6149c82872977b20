"""Is a directory safe to hold the SMP's control socket, `smp launch`'s lock file or a log?

Whoever can write the directory that holds the control socket can replace the socket with their
own and pose as the SMP to every trainer (and see their snapshots), or plant a symlink where a
lock or log file is written. So both ends check the directory, as ssh-agent and tmux do:

- the daemon side (`ensure_private_dir`: `smp serve` before it binds, `smp launch` before it takes
  its lock) creates a missing directory with mode 0700 and refuses one that is a symlink, is not
  a directory, is not owned by this process's effective uid, or that group or others can write.
  The default directory (/tmp/ecsnap-<uid>, in a /tmp anyone can write) must be exactly what the
  SMP creates: mode 0700, owned by this uid (tmux's rule).
- the client side (`check_socket_dir`: the trainer library, `smp status`, `smp stop` and the
  other commands that connect) refuses a socket whose directory is a symlink, is owned by neither
  this euid nor root, or that group or others can write, and a socket file that is not a socket
  owned by this euid or root.

Only the directory itself is checked, not its parents (as ssh-agent and tmux do). A root-owned
directory that only root can write passes the client side (a hostPath such as /run/ecsnap on
Kubernetes); one that group or others can write never does. The module needs nothing beyond the
standard library: the trainer library and the daemon both use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from smp import defaults
from smp.errors import ConfigError

SOCKET = "socket"
LOG = "log"
STORE = "store"
ADMIN = "admin token"

_FIX = {
    SOCKET: "remove it (it may have been created by another user to intercept the SMP) or "
    "choose another --socket / ECSNAP_SOCKET directory you own with mode 0700",
    STORE: "remove it (another user may have created it to read or swap the snapshots the "
    "trainers map) or choose another --store-dir you own with mode 0700",
    ADMIN: "choose an --admin-token-file path in a directory you own that group and others "
    "cannot write",
    LOG: "choose an --smp-log path in a directory you own that group and others cannot write "
    "(or leave --smp-log out: the log then goes beside the socket)",
}


class UnsafeDirectory(ConfigError):
    """A directory (or the socket in it) that another user could control: refused before use.

    The message names the directory, what is wrong with it (owner uid, mode in octal) and the
    fix."""


def _mode(st: os.stat_result) -> str:
    return f"0{stat.S_IMODE(st.st_mode):03o}"


def _fix(what: str) -> str:
    return _FIX.get(what, _FIX[SOCKET])


def _refuse(what: str, path: Path, problem: str) -> UnsafeDirectory:
    return UnsafeDirectory(f"{what} directory {path} {problem}: {_fix(what)}")


def default_dir() -> Path:
    """The directory of the default socket (/tmp/ecsnap-<uid>)."""
    return Path(defaults.default_socket()).parent


def _make(path: Path, what: str) -> None:
    """Create `path` and any missing parent with mode 0700 (whatever the umask)."""
    missing: list[Path] = []
    at = path
    while not os.path.lexists(at) and at != at.parent:
        missing.append(at)
        at = at.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            continue  # created meanwhile (a concurrent launch): checked below like any other
        except OSError as exc:
            raise ConfigError(
                f"cannot create the {what} directory {p}: {exc.strerror or exc}; {_fix(what)}"
            ) from None
        os.chmod(p, 0o700)


def _check_dir(what: str, path: Path, owners: tuple[int, ...]) -> os.stat_result | None:
    """The directory's lstat after the checks both sides share; None when it does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(what, path, f"is a symlink (to {os.readlink(path)}), not a directory")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(what, path, f"is not a directory (mode {_mode(st)})")
    if st.st_uid not in owners:
        whom = " or root" if 0 in owners and os.geteuid() != 0 else ""
        raise _refuse(
            what,
            path,
            f"is owned by uid {st.st_uid} (mode {_mode(st)}), not by this process's uid "
            f"{os.geteuid()}{whom}",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _refuse(
            what,
            path,
            f"is writable by group or others (owner uid {st.st_uid}, mode {_mode(st)}); another "
            "user could replace what is in it",
        )
    return st


def ensure_private_dir(
    path: str | os.PathLike[str], *, what: str = SOCKET, exact: bool | None = None
) -> Path:
    """The daemon side: make sure `path` is a directory only this process's user controls.

    A missing directory (and any missing parent) is created with mode 0700. An existing one must
    be a real directory (not a symlink), owned by this euid, that group and others cannot write.
    `exact` (default: when `path` is the default socket directory) also requires mode 0700
    exactly. `what` names the directory in messages: SOCKET (its lock file too) or LOG.
    Raises UnsafeDirectory (a ConfigError), or ConfigError when it cannot be created."""
    p = Path(os.path.abspath(path))
    if exact is None:
        exact = p == default_dir()
    _make(p, what)
    st = _check_dir(what, p, (os.geteuid(),))
    if st is None:
        raise ConfigError(f"the {what} directory {p} vanished while it was being checked")
    if exact and stat.S_IMODE(st.st_mode) != 0o700:
        raise _refuse(
            what,
            p,
            f"has mode {_mode(st)} (owner uid {st.st_uid}): the default socket directory must "
            "be exactly what the SMP creates, mode 0700 owned by you",
        )
    return p


def check_socket_dir(socket_path: str | os.PathLike[str]) -> bool:
    """The client side, before connecting: may the socket at `socket_path` be trusted?

    Its directory must be a real directory owned by this euid or root that group and others
    cannot write, and the socket, if there, a socket owned by this euid or root. Raises
    UnsafeDirectory otherwise. Returns True when the socket is there and passed; False when the
    directory or the socket does not exist yet (nothing to trust yet: check again before
    connecting once it does)."""
    sock = Path(os.path.abspath(socket_path))
    owners = (os.geteuid(), 0)
    if _check_dir(SOCKET, sock.parent, owners) is None:
        return False
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafeDirectory(
            f"{sock} is not a socket (mode {_mode(st)}, owner uid {st.st_uid}): it is not the "
            f"SMP's control socket; remove it, or point --socket / ECSNAP_SOCKET at the SMP's"
        )
    if st.st_uid not in owners:
        raise UnsafeDirectory(
            f"the socket {sock} is owned by uid {st.st_uid}, not by this process's uid "
            f"{os.geteuid()} or root: it is not your SMP's (another user may have put it there "
            f"to intercept the SMP); remove it, and check who can write {sock.parent}"
        )
    return True
