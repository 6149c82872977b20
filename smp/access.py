"""Who may act for a job on the control socket.

The socket's file permissions decide who may talk to the SMP at all (its owner's uid). Between
the jobs that may, the job key decides: a job id is bound, at its first registration, to the key
its ranks present (ECSNAP_JOB_KEY; a keyless job is bound to "no key"), and every later request
for that job must present the same key. Only the key's digest is kept, in memory and in the
store, so a restarted SMP keeps the binding. A request for a job that is not registered, or that
presents another key, gets one and the same answer: nobody learns that someone else's job exists.

The admin token (a random file the SMP writes at start, readable by its owner) may act for any
job and lists every job in a status: it is what `smp status` and `smp forget` present.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from smp.errors import BadRequest, NotRegistered, Unauthenticated

logger = logging.getLogger(__name__)

KEY_MIN_BYTES = 16
KEY_MAX_BYTES = 4096
ADMIN_TOKEN_BYTES = 32
_DOMAIN = b"ecsnap job key v1\0"


def key_digest(key: bytes) -> bytes:
    """What a job id is bound to: b"" for a keyless job, else a digest of its key."""
    return hashlib.sha256(_DOMAIN + key).digest() if key else b""


def not_registered(job_id: str) -> NotRegistered:
    """The one answer to a request for a job that is absent or bound to another key."""
    return NotRegistered(
        f"job {job_id!r} is not registered with this SMP under the job key this request "
        "presents: register first (with the job's ECSNAP_JOB_KEY, if it has one)"
    )


class Access:
    def __init__(self, admin_token: bytes, require_key: bool) -> None:
        self._admin = admin_token
        self.require_key = require_key

    def is_admin(self, token: bytes) -> bool:
        return bool(token) and hmac.compare_digest(token, self._admin)

    def registering(self, job_id: str, key: bytes, bound: bytes | None) -> bytes:
        """A registration presenting `key` for a job bound to `bound` (None: not bound yet):
        the digest to bind, or raises."""
        if key and not KEY_MIN_BYTES <= len(key) <= KEY_MAX_BYTES:
            raise BadRequest(
                f"a job key has {KEY_MIN_BYTES} to {KEY_MAX_BYTES} bytes, this one {len(key)}"
            )
        if not key and self.require_key:
            raise Unauthenticated(
                f"job {job_id!r} registered without a job key, and this SMP serves several jobs "
                "(--require-job-key): give every rank of the job the same secret in "
                "ECSNAP_JOB_KEY (or ECSNAP_JOB_KEY_FILE), e.g. from a Kubernetes Secret"
            )
        digest = key_digest(key)
        if bound is not None and not hmac.compare_digest(digest, bound):
            theirs = "a key" if bound else "no key"
            mine = "another key" if key and bound else ("a key" if key else "no key")
            raise Unauthenticated(
                f"job id {job_id!r} is taken on this SMP by a job with another job key (it was "
                f"registered with {theirs}, this registration presents {mine}): give every "
                "incarnation of a job the same ECSNAP_JOB_KEY, or use another job id"
            )
        return digest

    def check(self, job_id: str, key: bytes, admin: bytes, bound: bytes | None) -> None:
        """A request other than a registration, for a job bound to `bound` (None: the job is not
        known, or known from an earlier SMP's store without a binding)."""
        if self.is_admin(admin):
            return
        if bound is None or not hmac.compare_digest(key_digest(key), bound):
            raise not_registered(job_id)


def admin_token_path(socket_path: str, token_file: str | None = None) -> Path:
    """Where the admin token is: `token_file`, else beside the socket (`<socket>.admin`)."""
    return Path(token_file or f"{socket_path}.admin")


def admin_token(path: Path) -> bytes:
    """A fresh admin token, written owner-only to `path` (replacing an earlier SMP's)."""
    token = secrets.token_bytes(ADMIN_TOKEN_BYTES)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token.hex())
    os.replace(tmp, path)
    return token


def read_admin_token(path: Path) -> bytes:
    """The admin token at `path`, or b"" when this process cannot read it (not the owner)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return b""
    with os.fdopen(fd) as f:
        try:
            return bytes.fromhex(f.read(4 * ADMIN_TOKEN_BYTES).strip())
        except (OSError, ValueError):
            return b""
