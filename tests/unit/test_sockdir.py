"""Socket, lock and log directories are checked on both ends (smp.sockdir), as ssh-agent and tmux
do: the checkers' rules, then real processes (`smp serve`, `smp launch`, `smp status`, the trainer
library's channel) refusing a directory another user controls.

Torch-free (runs under the daemon's venv too); the trainer-library test skips without torch.
Tests that hand a directory to another uid (65534, nobody) need root.
"""

from __future__ import annotations

import importlib
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smp import defaults, sockdir
from smp.errors import ConfigError
from smp.sockdir import UnsafeDirectory, check_socket_dir, ensure_private_dir
from smp.testing import LocalSMP

pytestmark = pytest.mark.timeout(60)

NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="handing a directory to another uid (chown) needs root"
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def bound_socket(path: Path) -> socket.socket:
    """A real Unix socket file at `path` (kept open by the caller)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return s


def smp_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smp", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def d(workdir: Path) -> Path:
    """A fresh directory of ours, mode 0700."""
    p = workdir / "run"
    p.mkdir(mode=0o700)
    return p


@pytest.fixture
def store() -> Iterator[Path]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    p = Path(tempfile.mkdtemp(prefix="ecsnap-sd-", dir=base))
    try:
        yield p
    finally:
        subprocess.run(["rm", "-rf", str(p)], check=False)


# -- the checkers ------------------------------------------------------------------------------


def test_a_fresh_0700_directory_passes_both_sides(d: Path) -> None:
    assert ensure_private_dir(d) == d
    assert check_socket_dir(d / "smp.sock") is False  # no socket yet: nothing to trust
    with bound_socket(d / "smp.sock"):
        assert check_socket_dir(d / "smp.sock") is True


def test_missing_directories_are_created_0700_whatever_the_umask(workdir: Path) -> None:
    old = os.umask(0)
    try:
        made = ensure_private_dir(workdir / "a" / "b")
    finally:
        os.umask(old)
    assert mode(workdir / "a") == 0o700 and mode(made) == 0o700
    assert os.lstat(made).st_uid == os.geteuid()


def test_the_default_directory_is_created_0700_and_must_stay_exactly_that(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = workdir / f"ecsnap-{os.getuid()}"
    monkeypatch.setattr(defaults, "default_socket", lambda: str(default / "smp.sock"))
    assert sockdir.default_dir() == default
    ensure_private_dir(default)
    assert mode(default) == 0o700
    ensure_private_dir(default)  # what we created passes again
    os.chmod(default, 0o750)  # not writable by others, but not what the SMP creates
    with pytest.raises(UnsafeDirectory) as err:
        ensure_private_dir(default)
    assert str(default) in str(err.value) and "mode 0750" in str(err.value)
    assert "exactly" in str(err.value)
    other = workdir / "explicit"
    other.mkdir(mode=0o750)
    os.chmod(other, 0o750)
    ensure_private_dir(other)  # an explicit --socket directory only needs to be unwritable


@pytest.mark.parametrize("bits", [0o770, 0o757, 0o777, 0o1777])
def test_a_group_or_world_writable_directory_is_refused_on_both_sides(d: Path, bits: int) -> None:
    os.chmod(d, bits)
    for check in (ensure_private_dir, lambda p: check_socket_dir(p / "smp.sock")):
        with pytest.raises(UnsafeDirectory) as err:
            check(d)
        msg = str(err.value)
        assert str(d) in msg and f"mode 0{bits:03o}" in msg and "writable" in msg
        assert "--socket / ECSNAP_SOCKET" in msg and "remove it" in msg


@needs_root
def test_a_directory_owned_by_another_uid_is_refused_on_both_sides(d: Path) -> None:
    os.chown(d, NOBODY, NOBODY)
    for check in (ensure_private_dir, lambda p: check_socket_dir(p / "smp.sock")):
        with pytest.raises(UnsafeDirectory) as err:
            check(d)
        msg = str(err.value)
        assert str(d) in msg and f"uid {NOBODY}" in msg and "mode 0700" in msg
        assert "intercept the SMP" in msg
    assert isinstance(err.value, ConfigError)  # the daemon's commands report it as such


def test_a_symlink_in_place_of_the_directory_is_refused_on_both_sides(d: Path) -> None:
    link = d.parent / "link"
    link.symlink_to(d)
    for check in (ensure_private_dir, lambda p: check_socket_dir(p / "smp.sock")):
        with pytest.raises(UnsafeDirectory, match="symlink"):
            check(link)
    not_dir = d / "file"
    not_dir.write_text("")
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        ensure_private_dir(not_dir)


def test_root_owned_0755_passes_the_client_not_the_daemon_of_another_user(
    d: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.lstat(d).st_uid != 0:
        pytest.skip("needs a root-owned directory (run as root)")
    os.chmod(d, 0o755)
    with bound_socket(d / "smp.sock"):
        ensure_private_dir(d)  # root's own SMP
        monkeypatch.setattr(os, "geteuid", lambda: 1000)  # a trainer running as uid 1000
        assert check_socket_dir(d / "smp.sock") is True  # root's socket in root's directory
        with pytest.raises(UnsafeDirectory, match="owned by uid 0"):
            ensure_private_dir(d)  # an SMP of uid 1000 does not take root's directory


@needs_root
def test_kubernetes_layouts_pass(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DaemonSet: hostPath /run/ecsnap handed to uid 1000 with mode 0700 by the init container.
    host = workdir / "run-ecsnap"
    host.mkdir(mode=0o700)
    os.chown(host, 1000, 1000)
    # Sidecar: a world-writable emptyDir (fsGroup: setgid) at /ecsnap; the SMP makes /ecsnap/run.
    empty = workdir / "emptydir"
    empty.mkdir()
    os.chmod(empty, 0o2777)
    os.chown(empty, 0, 1000)
    with monkeypatch.context() as m:
        m.setattr(os, "geteuid", lambda: 1000)
        ensure_private_dir(host)
        assert check_socket_dir(host / "smp.sock") is False
        with pytest.raises(UnsafeDirectory, match="writable"):
            check_socket_dir(empty / "smp.sock")  # a socket directly in it would be refused
    run = ensure_private_dir(empty / "run")  # (created as root here, mode 0700 all the same)
    assert mode(run) == 0o700 and check_socket_dir(run / "smp.sock") is False


def test_the_socket_file_itself_must_be_a_socket_of_ours_or_roots(d: Path) -> None:
    (d / "smp.sock").write_text("not a socket")
    with pytest.raises(UnsafeDirectory, match="not a socket"):
        check_socket_dir(d / "smp.sock")
    (d / "smp.sock").unlink()
    if os.geteuid() != 0:
        return
    with bound_socket(d / "smp.sock"):
        os.lchown(d / "smp.sock", NOBODY, NOBODY)
        with pytest.raises(UnsafeDirectory) as err:
            check_socket_dir(d / "smp.sock")
        assert f"owned by uid {NOBODY}" in str(err.value) and str(d / "smp.sock") in str(err.value)


# -- real processes ----------------------------------------------------------------------------


def _squat(path: Path, how: str) -> dict[str, bytes]:
    """`path` taken over: owned by nobody, or world-writable; a planted file and fake socket."""
    path.mkdir(mode=0o700)
    (path / "planted").write_bytes(b"squatter's file")
    bound_socket(path / "smp.sock").close()  # a socket file stays behind
    if how == "nobody":
        os.lchown(path / "smp.sock", NOBODY, NOBODY)
        os.chown(path, NOBODY, NOBODY)
    else:
        os.chmod(path, 0o777)
    return contents(path)


def contents(path: Path) -> dict[str, bytes]:
    return {
        p.name: b"<socket>" if p.is_socket() else p.read_bytes() for p in sorted(path.iterdir())
    }


@pytest.mark.parametrize(
    "how",
    [pytest.param("nobody", marks=needs_root), "world-writable"],
)
def test_smp_serve_refuses_a_squatted_socket_directory(
    workdir: Path, store: Path, how: str
) -> None:
    squatted = workdir / "sq"
    before = _squat(squatted, how)
    st = os.lstat(squatted)
    out = smp_cli(
        "serve", "--socket", str(squatted / "smp.sock"), "--store-dir", str(store),
        "--port", "0", "--memory-limit", "64M",
    )  # fmt: skip
    assert out.returncode != 0, out.stderr
    assert str(squatted) in out.stderr and "intercept the SMP" in out.stderr, out.stderr
    assert (f"uid {NOBODY}" if how == "nobody" else "writable by group or others") in out.stderr
    assert "Traceback" not in out.stderr
    assert contents(squatted) == before  # nothing removed, nothing added
    after = os.lstat(squatted)
    assert (after.st_uid, after.st_mode) == (st.st_uid, st.st_mode)


@pytest.mark.parametrize("how", [pytest.param("nobody", marks=needs_root), "world-writable"])
def test_smp_status_and_stop_refuse_a_squatted_socket_directory(workdir: Path, how: str) -> None:
    squatted = workdir / "sq"
    _squat(squatted, how)
    for command in ("status", "stop"):
        out = smp_cli(command, "--socket", str(squatted / "smp.sock"))
        assert out.returncode == 2, out
        assert str(squatted) in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_trainer_library_refuses_a_socket_in_a_squatted_directory(workdir: Path) -> None:
    # Imported by name: the daemon's venv has no torch and skips this test only (conftest
    # skips whole files that import the trainer library at the top).
    channel = pytest.importorskip("ecsnap.channel")
    errors = importlib.import_module("ecsnap.errors")
    pb = importlib.import_module("smp._proto.control_pb2")
    node = LocalSMP(workdir / "node", memory_limit="64M").start()
    try:
        good = channel.Channel(node.socket, "j", 5.0)
        assert good.call("status", pb.StatusRequest()).status.pid > 0
        good.close()
        cases = [("world-writable", lambda: os.chmod(node.root, 0o777))]
        if os.geteuid() == 0:
            cases.append(("nobody", lambda: os.chown(node.root, NOBODY, NOBODY)))
        for how, squat in cases:
            st = os.lstat(node.root)
            squat()
            try:
                ch = channel.Channel(node.socket, "j", 5.0)
                with pytest.raises(errors.SMPUnavailableError) as err:
                    ch.call("status", pb.StatusRequest())
                msg = str(err.value)
                assert str(node.root) in msg and "intercept the SMP" in msg, (how, msg)
                ch.close()
            finally:
                os.chown(node.root, st.st_uid, st.st_gid)
                os.chmod(node.root, stat.S_IMODE(st.st_mode))
        # Once checked, a channel does not look again on every call.
        ch = channel.Channel(node.socket, "j", 5.0)
        ch.call("status", pb.StatusRequest())
        os.chmod(node.root, 0o777)
        try:
            ch.call("status", pb.StatusRequest())
        finally:
            os.chmod(node.root, 0o755)
            ch.close()
    finally:
        node.close()


def _launch(*args: str) -> subprocess.CompletedProcess[str]:
    return smp_cli("launch", *args, "--torchrun", "true", "--", "train.py")


def test_smp_launch_refuses_a_planted_symlink_lock_or_log(workdir: Path) -> None:
    run = workdir / "run"
    run.mkdir(mode=0o700)
    target = workdir / "victim"
    sock = run / "smp.sock"
    (run / "smp.sock.lock").symlink_to(target)
    out = _launch("--socket", str(sock))
    assert out.returncode == 2, out
    assert f"lock file {sock}.lock is a symlink" in out.stderr, out.stderr
    assert not target.exists() and not sock.exists()

    (run / "smp.sock.lock").unlink()
    log = run / "smp.log"
    log.symlink_to(target)
    for explicit in ([], ["--smp-log", str(log)]):
        out = _launch("--socket", str(sock), *explicit)
        assert out.returncode == 2, out
        assert f"SMP log {log} is a symlink" in out.stderr, out.stderr
        assert not target.exists() and not sock.exists()  # no SMP was started
    assert stat.S_ISREG(os.lstat(f"{sock}.lock").st_mode)


def test_smp_launch_checks_the_socket_and_log_directories(workdir: Path) -> None:
    open_dir = workdir / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    run = workdir / "run"
    out = _launch("--socket", str(run / "smp.sock"), "--smp-log", str(open_dir / "smp.log"))
    assert out.returncode == 2, out
    assert f"log directory {open_dir} is writable by group or others" in out.stderr, out.stderr
    assert "--smp-log" in out.stderr and list(open_dir.iterdir()) == []
    assert mode(run) == 0o700  # the socket's directory was made (and checked) first

    out = _launch("--socket", str(open_dir / "smp.sock"))
    assert out.returncode == 2, out
    assert f"socket directory {open_dir} is writable" in out.stderr, out.stderr
    assert list(open_dir.iterdir()) == []  # no lock file was taken there
    if os.geteuid() == 0:
        os.chmod(open_dir, 0o700)
        os.chown(open_dir, NOBODY, NOBODY)
        out = _launch("--socket", str(open_dir / "smp.sock"))
        assert out.returncode == 2 and f"owned by uid {NOBODY}" in out.stderr, out.stderr
        assert list(open_dir.iterdir()) == []
