"""Mutual TLS for the peer service (optional): every SMP presents a certificate signed by the
cluster's CA and accepts only peers that do the same.

The job's secret already keeps one job (or a stranger) from reading or overwriting another job's
snapshots; TLS adds confidentiality of the snapshot bytes and of the secret itself on the wire,
and keeps anything without a cluster certificate from even reaching the service. Certificates
must name the address an SMP advertises (its --host, or its host name for a wildcard bind) in
their subject alternative names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from smp.errors import ConfigError


@dataclass(frozen=True)
class PeerTls:
    cert: bytes  # PEM certificate chain of this SMP
    key: bytes  # PEM private key of that certificate
    ca: bytes  # PEM certificate(s) of the CA that signs every SMP of the cluster

    @classmethod
    def load(cls, cert: str, key: str, ca: str) -> PeerTls | None:
        """Read the three PEM files; None when none is given, an error when only some are."""
        given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
        if not any(given.values()):
            return None
        missing = [flag for flag, path in given.items() if not path]
        if missing:
            raise ConfigError(
                f"TLS for the peer service needs --tls-cert, --tls-key and --tls-ca together; "
                f"{', '.join(missing)} missing (env SMP_TLS_CERT, SMP_TLS_KEY, SMP_TLS_CA)"
            )
        blobs = {}
        for flag, path in given.items():
            try:
                blobs[flag] = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None
            if b"-----BEGIN" not in blobs[flag]:
                raise ConfigError(f"{flag} {path} is not a PEM file")
        return cls(blobs["--tls-cert"], blobs["--tls-key"], blobs["--tls-ca"])

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def open_channel(
    address: str, tls: PeerTls | None, options: list[tuple[str, int]] | None = None
) -> grpc.Channel:
    """A channel to a peer's port: TLS when the cluster uses it, plaintext otherwise."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.channel_credentials(), options=options)
