"""Credentials of ``catalogfs serve``: the JDBC users file and the Connect token's hash file.

**Users file** (``server.users_file``, default ``<data_root>/serve-users``, mode 0600): one user a
line, ``name:role:pbkdf2-sha256:iterations:salt-hex:hash-hex`` — a salted PBKDF2-HMAC-SHA256 of the
password, never the password. The server's password check (resources/java/catalogfs/UsersFile.java)
reads it at every login, so users added or removed apply to the next connection, and refuses every
login while the file is readable or writable by anyone but its owner. Roles: ``reader`` (reads
only) and ``operator`` (may write over JDBC when ``server.jdbc_read_only`` is false).

**Connect token hash** (``<data_root>/.serve/connect-token.sha256``, 0600): the SHA-256 of the
Connect token, which the server's token check (ConnectTokenInterceptor.java) reads when it starts.
The token itself never enters the server's JVM (not its environment, system properties or Spark
settings), so SQL cannot read it back.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import hmac
from pathlib import Path
import re
import secrets

from catalogfs.errors import ConfigError
from catalogfs.permissions import write_private

ROLES = ("reader", "operator")
SCHEME = "pbkdf2-sha256"
ITERATIONS = 120_000
DEFAULT_READER = "reader"
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


@dataclass(frozen=True)
class User:
    name: str
    role: str


def users_file(cfg) -> Path:
    """Where the JDBC users are kept: ``server.users_file``, else ``<data_root>/serve-users``."""
    return Path(cfg.server.users_file) if cfg.server.users_file else cfg.storage.data_root / "serve-users"


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``pbkdf2-sha256:<iterations>:<salt hex>:<hash hex>`` (the last four fields of a line)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, 32)
    return f"{SCHEME}:{iterations}:{salt.hex()}:{digest.hex()}"


def check_password(line_hash: str, password: str) -> bool:
    scheme, iterations, salt, digest = line_hash.split(":")
    actual = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations), len(digest) // 2)
    return scheme == SCHEME and hmac.compare_digest(actual.hex(), digest)


def read_users(path: Path) -> dict[str, tuple[str, str]]:
    """name → (role, hash fields), in file order; {} when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.strip().split(":")
        if len(fields) != 6 or fields[1] not in ROLES or fields[2] != SCHEME:
            raise ConfigError(f"{path}, line {number}: expected name:role:{SCHEME}:iterations:salt:hash "
                              f"with role {' or '.join(ROLES)}")
        users[fields[0]] = (fields[1], ":".join(fields[2:]))
    return users


def write_users(path: Path, users: dict[str, tuple[str, str]]) -> None:
    """Replace the file (0600 from its first byte; atomic rename)."""
    lines = [f"{name}:{role}:{hashed}\n" for name, (role, hashed) in users.items()]
    write_private(path, "# catalogfs serve: JDBC users (name:role:pbkdf2-sha256:iterations:salt:hash)\n" + "".join(lines))


def add_user(path: Path, name: str, role: str, password: str) -> None:
    """Add ``name`` (or replace their role and password)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"user name {name!r}: use 1-64 letters, digits and . _ @ -")
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: expected {' or '.join(ROLES)}")
    if len(password) < 8:
        raise ConfigError("the password must have at least 8 characters")
    users = read_users(path)
    users[name] = (role, hash_password(password))
    write_users(path, users)


def remove_user(path: Path, name: str) -> bool:
    users = read_users(path)
    if users.pop(name, None) is None:
        return False
    write_users(path, users)
    return True


def default_password_file(data_root: Path) -> Path:
    """Where the password of the reader made at the first start is kept (0600), for the owner."""
    return data_root / ".serve" / "reader.password"


def ensure_users_file(cfg) -> str | None:
    """Before a server with ``jdbc_auth: password`` starts: refuse a users file others can read or
    write; make one with a reader ``reader`` and a random password when there is none (the password
    is kept in :func:`default_password_file`). Returns that password, or None when the file existed."""
    path = users_file(cfg)
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"server.users_file {path} has mode {mode:o}: others can read or write it; "
                              f"`chmod 600 {path}` first")
        read_users(path)  # a malformed file is a config error now, not a refused login later
        return None
    password = secrets.token_urlsafe(18)
    add_user(path, DEFAULT_READER, "reader", password)
    write_private(default_password_file(cfg.storage.data_root), f"{DEFAULT_READER}:{password}\n")
    return password


def default_reader(data_root: Path) -> tuple[str, str] | None:
    """(user, password) of the reader made at the first start, while its file is kept."""
    try:
        user, password = default_password_file(data_root).read_text().strip().split(":", 1)
    except (OSError, ValueError):
        return None
    return user, password


def token_hash_file(data_root: Path) -> Path:
    return data_root / ".serve" / "connect-token.sha256"


def write_token_hash(data_root: Path, token: str) -> Path:
    """The Connect token's SHA-256 (hex) in a 0600 file, for the server's token check."""
    path = token_hash_file(data_root)
    write_private(path, hashlib.sha256(token.encode()).hexdigest() + "\n")
    return path
