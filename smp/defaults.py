"""Defaults and environment-variable names shared by the daemon and the trainer library.

Both sides must agree on where the local SMP listens, so the defaults live here, in one place.
"""

from __future__ import annotations

import os

# Environment variables read by the trainer library (ecsnap).
ENV_SOCKET = "ECSNAP_SOCKET"
ENV_JOB = "ECSNAP_JOB"
ENV_GROUP_SIZE = "ECSNAP_GROUP_SIZE"
ENV_PARITY = "ECSNAP_PARITY"
ENV_PLACEMENT = "ECSNAP_PLACEMENT"
DEFAULT_GROUP_SIZE = 4
DEFAULT_PARITY = 1

# Environment variables read by the daemon (`smp serve`); flags override them.
ENV_SMP_SOCKET = "SMP_SOCKET"
ENV_SMP_STORE_DIR = "SMP_STORE_DIR"
ENV_SMP_HOST = "SMP_HOST"
ENV_SMP_PORT = "SMP_PORT"
ENV_SMP_MEMORY_LIMIT = "SMP_MEMORY_LIMIT"
ENV_SMP_CODEC = "SMP_CODEC"
ENV_SMP_LOG_LEVEL = "SMP_LOG_LEVEL"

# Bytes covered by one checksum. Small enough to localize corruption, large enough that the
# per-chunk overhead is invisible (256 checksums per GiB).
CHECKSUM_CHUNK = 4 << 20

# Every tensor in an arena starts on this boundary (cache lines and most SIMD loads).
TENSOR_ALIGN = 64


def default_socket() -> str:
    """The local SMP's control socket when neither a flag nor an environment variable names one."""
    return f"/tmp/ecsnap-{os.getuid()}/smp.sock"


def default_store_dir() -> str:
    """Arena files live on tmpfs so they are memory, survive the trainer, and are easy to wipe."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    return f"{base}/ecsnap-{os.getuid()}"


# Peer service (gRPC between SMPs): the metadata key carrying the job's secret, the message size
# limit, and the size of the pieces big transfers are streamed in.
PEER_TOKEN_KEY = "x-ecsnap-token"
PEER_MAX_MESSAGE = 8 << 20
PEER_PIECE = 1 << 20
