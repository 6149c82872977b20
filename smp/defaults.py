"""Names, limits and defaults shared by the daemon and the trainer library, in one place.

Both sides must agree on where the local SMP listens and what a job id may be, so the lookups
live here: `socket_from` (flag, then environment, then the default) and `check_job_id`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

# Environment variables read by the trainer library (ecsnap).
ENV_SOCKET = "ECSNAP_SOCKET"
ENV_JOB = "ECSNAP_JOB"
ENV_GROUP_SIZE = "ECSNAP_GROUP_SIZE"
ENV_PARITY = "ECSNAP_PARITY"
ENV_PLACEMENT = "ECSNAP_PLACEMENT"
ENV_JOB_KEY = "ECSNAP_JOB_KEY"  # the job's key on the control socket (smp.access)
ENV_JOB_KEY_FILE = "ECSNAP_JOB_KEY_FILE"  # or a file holding it
DEFAULT_GROUP_SIZE = 4
DEFAULT_PARITY = 1

# The daemon's own socket variable (its other settings are listed in smp.config.SETTINGS).
ENV_SMP_SOCKET = "SMP_SOCKET"

# Longest path a Unix socket accepts (sun_path is 108 bytes including the terminating NUL).
MAX_SOCKET_PATH = 107

# Bytes covered by one checksum. Small enough to localize corruption, large enough that the
# per-chunk overhead is invisible (256 checksums per GiB).
CHECKSUM_CHUNK = 4 << 20

# Every tensor span in an arena starts on this boundary (cache lines and most SIMD loads).
TENSOR_ALIGN = 64

# Job ids name directories: letters, digits, '.', '_' and '-', starting with a letter or digit.
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidJobId(ValueError):
    """A job id that could escape the store or confuse a shell."""


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise InvalidJobId(
            f"job id {job_id!r} is not valid: use 1-128 characters of letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return job_id


def default_socket() -> str:
    """The local SMP's control socket when neither a flag nor an environment variable names one."""
    return f"/tmp/ecsnap-{os.getuid()}/smp.sock"


def socket_from(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """The SMP's control socket: `explicit`, else $SMP_SOCKET, else $ECSNAP_SOCKET, else the
    default. The daemon, its commands and the trainer library all resolve it this way."""
    env = os.environ if env is None else env
    return explicit or env.get(ENV_SMP_SOCKET) or env.get(ENV_SOCKET) or default_socket()


def default_store_dir() -> str:
    """Arena files live on tmpfs so they are memory, survive the trainer, and are easy to wipe."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    return f"{base}/ecsnap-{os.getuid()}"


# Peer service (gRPC between SMPs): the metadata keys carrying the job id and the job's secret
# (checked before any message of a call is read), the message size limit, and the size of the
# pieces big transfers are streamed in.
PEER_JOB_KEY = "x-ecsnap-job"
PEER_TOKEN_KEY = "x-ecsnap-token"
PEER_MAX_MESSAGE = 8 << 20
PEER_PIECE = 1 << 20
