"""Mutual TLS on the peer port: certificates from a throwaway CA made with openssl; only SMPs
holding a certificate of the cluster's CA get through, and the job's secret still applies."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from smp import report
from smp._proto import peer_pb2, peer_pb2_grpc
from smp.daemon import assemble
from smp.errors import ConfigError
from smp.jobs import RankInfo
from smp.peer import PeerServer, PeerServicer
from smp.peerclient import PeerClient
from smp.store import Store
from smp.testing import LocalSMP
from smp.tls import PeerTls, open_channel

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
JOB = "tls-job"
SECRET = b"t" * 32


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)  # fmt: skip


def make_cert(d: Path, ca: str, name: str) -> tuple[str, str]:
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
             cwd=d)  # fmt: skip
    return str(d / f"{name}.pem"), str(d / f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_cert(d, "ca", "smp-a")
    make_cert(d, "ca", "smp-b")
    make_cert(d, "rogue-ca", "rogue")
    return d


def tls_of(pki: Path, name: str, ca: str = "ca") -> PeerTls:
    tls = PeerTls.load(str(pki / f"{name}.pem"), str(pki / f"{name}.key"), str(pki / f"{ca}.pem"))
    assert tls is not None
    return tls


@pytest.fixture
def server(tmp_path: Path, pki: Path) -> Iterator[PeerServer]:
    pool = ThreadPoolExecutor(2)
    parts = assemble(
        Store(str(tmp_path / "store"), 64 << 20),
        pool,
        "auto",
        tls_of(pki, "smp-a"),
        rpc_timeout=2.0,
    )
    service, replication = parts.service, parts.crossnode
    service.register(JOB, RankInfo(0, 2, 0, 1, 0, 2, 4242))
    srv = PeerServer(
        PeerServicer(replication, "a", "auto"), "127.0.0.1", 0, tls=tls_of(pki, "smp-a")
    )
    srv.start()
    replication.configure(JOB, 0, 2, 2, 1, "consecutive", [srv.address, "127.0.0.1:1"], SECRET)
    try:
        yield srv
    finally:
        srv.stop(0.5)
        replication.close()
        service.store.close()
        pool.shutdown()


def test_a_peer_with_a_cluster_certificate_gets_through(server: PeerServer, pki: Path) -> None:
    client = PeerClient(server.address, JOB, SECRET, tls_of(pki, "smp-b"))
    try:
        assert not client.job_state(JOB, 5.0).has_committed
    finally:
        client.close()
    assert report.check_health(server.address, 5.0, tls_of(pki, "smp-b")) == report.SERVING


@pytest.mark.parametrize("who", ["plaintext", "rogue"])
def test_others_do_not_reach_the_service(server: PeerServer, pki: Path, who: str) -> None:
    tls = None if who == "plaintext" else tls_of(pki, "rogue", "rogue-ca")
    with open_channel(server.address, tls) as channel:
        stub = peer_pb2_grpc.PeerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Info(peer_pb2.InfoRequest(job_id=JOB), timeout=5.0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert report.check_health(server.address, 3.0, tls).startswith("UNREACHABLE")


def test_the_secret_still_applies_over_tls(server: PeerServer, pki: Path) -> None:
    client = PeerClient(server.address, JOB, b"w" * 32, tls_of(pki, "smp-b"))
    try:
        with pytest.raises(grpc.RpcError) as info:
            client.job_state(JOB, 5.0)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    finally:
        client.close()


def test_incomplete_or_bad_tls_settings_are_refused(pki: Path, tmp_path: Path) -> None:
    assert PeerTls.load("", "", "") is None
    with pytest.raises(ConfigError, match="--tls-key, --tls-ca missing"):
        PeerTls.load(str(pki / "smp-a.pem"), "", "")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM file"):
        PeerTls.load(str(tmp_path / "junk.pem"), str(pki / "smp-a.key"), str(pki / "ca.pem"))
    with pytest.raises(ConfigError, match="No such file"):
        PeerTls.load(str(tmp_path / "absent.pem"), str(pki / "smp-a.key"), str(pki / "ca.pem"))


def test_smp_serve_and_status_with_tls(pki: Path, tmp_path: Path) -> None:
    flags = ("--tls-cert", str(pki / "smp-a.pem"), "--tls-key", str(pki / "smp-a.key"))
    flags += ("--tls-ca", str(pki / "ca.pem"))
    node = LocalSMP(tmp_path / "n", memory_limit="64M", extra_args=flags).start()
    try:
        assert "(mutual TLS)" in node.tail()
        status = [sys.executable, "-m", "smp", "status", "--socket", node.socket]
        plain = subprocess.run(status, capture_output=True, text=True, timeout=60)
        assert plain.returncode == 1 and "UNREACHABLE" in plain.stderr  # no certificate
        ok = subprocess.run(
            [*status, "--tls-cert", str(pki / "smp-b.pem"), "--tls-key", str(pki / "smp-b.key"),
             "--tls-ca", str(pki / "ca.pem")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
    finally:
        node.close()
