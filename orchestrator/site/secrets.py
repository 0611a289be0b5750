"""The site's secrets: bearer tokens of the controller API and the edges' evapi and JSON-RPC
secrets, each in an owner-only file under ``security.secrets_dir``::

    api-<token name>.token         controller API bearer token (role from the site)
    evapi-<edge>.secret            first message of the controller's evapi connection
    jsonrpc-<edge>.secret          ``Authorization: Bearer …`` of JSON-RPC over HTTP
    kamailio-<edge>.secrets.cfg    SHA-256 digests of the two above, for ``include_file``

Secrets are 256 random bits (``secrets.token_urlsafe(32)``), created with ``O_EXCL`` and mode
0600 in a 0700 directory, never overwritten; a file that others can read is refused. The
Kamailio include holds digests only (the config compares ``{s.sha256}`` of what a client
sends), so reading it reveals no secret.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SecretError

__all__ = ["EdgeSecrets", "api_token_path", "check_owner_only", "edge_secrets", "ensure_secret",
           "kamailio_include", "kamailio_include_path", "load_secret", "redis_acl",
           "redis_acl_path", "rtpengine_redis_env", "rtpengine_redis_env_path", "sha256_hex",
           "write_kamailio_include", "write_private"]

MIN_CHARS = 22  # 22 base64url characters = 132 bits
MAX_BYTES = 4096
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def api_token_path(site: Any, name: str) -> Path:
    return Path(site.security.secrets_dir) / f"api-{name}.token"


def evapi_secret_path(site: Any, edge: str) -> Path:
    return Path(site.security.secrets_dir) / f"evapi-{edge}.secret"


def jsonrpc_secret_path(site: Any, edge: str) -> Path:
    return Path(site.security.secrets_dir) / f"jsonrpc-{edge}.secret"


def kamailio_include_path(site: Any, edge: str) -> Path:
    return Path(site.security.secrets_dir) / f"kamailio-{edge}.secrets.cfg"


def redis_acl_path(site: Any) -> Path:
    return Path(site.security.secrets_dir) / "redis-acl.conf"


def rtpengine_redis_env_path(site: Any) -> Path:
    return Path(site.security.secrets_dir) / "rtpengine-redis.env"


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _check_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(f"{path}: not a regular file")
    if st.st_mode & 0o077:
        raise SecretError(f"{path} is readable or writable by group/others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); refusing to use it: "
                          f"chmod 600 {path}")


def check_owner_only(path: str | Path) -> None:
    """A :class:`SecretError` when ``path`` exists and is not an owner-only regular file
    (a missing file is fine: ``siprecctl render --secrets`` creates it; one this user may
    not even look at is checked where it is used, by :func:`load_secret`)."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, PermissionError):
        return
    except OSError as exc:
        raise SecretError(f"{path}: cannot stat: {exc.strerror}") from None
    _check_mode(path, st)


def load_secret(path: str | Path) -> str:
    """The secret in ``path``: a :class:`SecretError` when it is missing, not owner-only,
    or not a secret siprecctl would generate (too short, odd characters). The error never
    shows the file's content."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SecretError(f"{path}: no such secret file (siprecctl render or serve creates "
                          f"it)") from None
    except OSError as exc:
        raise SecretError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        _check_mode(path, os.fstat(fd))
        raw = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SecretError(f"{path}: not a secret (non-ASCII content)") from None
    if len(raw) > MAX_BYTES or not _SECRET_RE.match(value) or len(value) < MIN_CHARS:
        raise SecretError(f"{path}: not a secret (expected at least {MIN_CHARS} characters "
                          f"of A-Z a-z 0-9 _ -)")
    return value


def _secure_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SecretError(f"{path}: cannot create the secrets directory: {exc.strerror}") \
            from None
    st = path.stat()
    if st.st_mode & 0o022:
        raise SecretError(f"{path}: the secrets directory is writable by group/others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}): chmod 700 {path}")


def ensure_secret(path: str | Path) -> tuple[str, bool]:
    """(secret, created): the secret in ``path``, generated (0600, ``O_EXCL``) if missing.
    An existing file is never overwritten."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return load_secret(path), False
    _secure_dir(path.parent)
    value = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:  # created meanwhile by another siprecctl: use that one
        return load_secret(path), False
    except OSError as exc:
        raise SecretError(f"{path}: cannot create: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)
    return value, True


@dataclass(frozen=True)
class EdgeSecrets:
    """The two secrets of one edge (what the controller and ``siprecctl edge`` send)."""

    evapi: str
    jsonrpc: str


def edge_secrets(site: Any, edge: str, *, create: bool = False) -> EdgeSecrets:
    """The evapi and JSON-RPC secrets of ``edge`` (created when missing with ``create``)."""
    get = (lambda p: ensure_secret(p)[0]) if create else load_secret
    return EdgeSecrets(evapi=get(evapi_secret_path(site, edge)),
                       jsonrpc=get(jsonrpc_secret_path(site, edge)))


def kamailio_include(edge: str, sec: EdgeSecrets) -> str:
    """The ``include_file`` of the edge's kamailio.cfg: digests, never the secrets."""
    return (f"# siprecctl: secrets of edge {edge} as SHA-256 digests (generated from "
            f"evapi-{edge}.secret and jsonrpc-{edge}.secret; regenerated by siprecctl render)\n"
            f'#!define EVAPI_SECRET_SHA256 "{sha256_hex(sec.evapi)}"\n'
            f'#!define RPC_AUTH_SHA256 "{sha256_hex("Bearer " + sec.jsonrpc)}"\n')


def redis_acl(password: str) -> str:
    """The Redis server's include with the password as an ACL rule: its SHA-256 only
    (``#<hex>``), every command, key and Pub/Sub channel (rtpengine PSUBSCRIBEs)."""
    return ("# siprecctl: the Redis password as a SHA-256 digest (from the site's redis "
            "auth file;\n# regenerated by siprecctl render --secrets)\n"
            f"user default on #{sha256_hex(password)} ~* &* +@all\n")


def rtpengine_redis_env(password: str) -> str:
    """rtpengine's Redis password as an environment variable (systemd ``EnvironmentFile=``):
    10.5 reads ``RTPENGINE_REDIS_AUTH_PW`` for ``redis`` when the option has no ``PW@``
    (daemon/main.c ``redis_ep_parse``; ``redis-write`` would need
    ``RTPENGINE_REDIS_WRITE_AUTH_PW``). A ``PW@`` in the config would put it in the
    rendered file."""
    return f"RTPENGINE_REDIS_AUTH_PW={password}\n"


def write_kamailio_include(site: Any, edge: str, sec: EdgeSecrets) -> tuple[Path, bool]:
    """(path, changed): write the include when its content differs (atomically, 0600)."""
    path = kamailio_include_path(site, edge)
    return path, write_private(path, kamailio_include(edge, sec))


def write_private(path: Path, content: str) -> bool:
    """Write ``content`` to ``path`` (0600, atomically) when it differs; True when written."""
    try:
        if path.read_text() == content:
            return False
    except OSError:
        pass
    _secure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, content.encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SecretError(f"{path}: cannot write: {exc.strerror}") from None
    return True
