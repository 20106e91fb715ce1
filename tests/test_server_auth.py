"""Credentials of `catalogfs serve` without a server: the users file, `catalogfs serve-users`, the
token's hash, the exposure rules and the TLS keystore (no JVM; tests/test_security.py logs in for real)."""

from __future__ import annotations

import hashlib
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from catalogfs.config import DEFAULT_CONF_DIR, load_config
from catalogfs.errors import ConfigError
from catalogfs.server_auth import (
    add_user, check_password, default_reader, ensure_users_file, hash_password, read_users, remove_user, users_file,
    write_token_hash,
)
from catalogfs.server_session import check_exposure, prepare_credentials, write_keystore
from tests.helpers import server_env

CATALOGFS = str(Path(sys.executable).parent / "catalogfs")


def _cfg(root: Path, *overrides: str):
    return load_config([DEFAULT_CONF_DIR / "local.yaml"], [f"storage.data_root={root}", *overrides])


def test_a_password_is_kept_as_a_salted_pbkdf2_hash():
    one, two = hash_password("correct horse"), hash_password("correct horse")
    assert one != two and "correct horse" not in one  # a new salt each time
    scheme, iterations, salt, digest = one.split(":")
    assert scheme == "pbkdf2-sha256" and int(iterations) >= 100_000 and len(bytes.fromhex(salt)) == 16
    assert digest == hashlib.pbkdf2_hmac("sha256", b"correct horse", bytes.fromhex(salt), int(iterations)).hex()
    assert check_password(one, "correct horse") and not check_password(one, "correct horsE")


def test_users_are_added_replaced_and_removed_in_a_0600_file(tmp_path):
    path = tmp_path / "users"
    add_user(path, "analyst", "reader", "first-password")
    add_user(path, "ops", "operator", "second-password")
    add_user(path, "analyst", "operator", "third-password")  # replaced
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = read_users(path)
    assert {name: role for name, (role, _) in users.items()} == {"analyst": "operator", "ops": "operator"}
    assert check_password(users["analyst"][1], "third-password")
    assert "third-password" not in path.read_text()
    assert remove_user(path, "ops") and not remove_user(path, "ops")
    assert list(read_users(path)) == ["analyst"]


@pytest.mark.parametrize("name,role,password,message", [
    ("bad name", "reader", "long-enough", "user name"),
    ("x:y", "reader", "long-enough", "user name"),
    ("analyst", "admin", "long-enough", "role"),
    ("analyst", "reader", "short", "8 characters"),
])
def test_bad_users_are_refused(tmp_path, name, role, password, message):
    with pytest.raises(ConfigError, match=message):
        add_user(tmp_path / "users", name, role, password)


def test_the_first_start_makes_a_reader_and_a_file_others_can_read_is_refused(tmp_path):
    cfg = _cfg(tmp_path / "data")
    password = ensure_users_file(cfg)
    path = users_file(cfg)
    assert path == tmp_path / "data" / "serve-users" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert default_reader(cfg.storage.data_root) == ("reader", password)
    assert read_users(path)["reader"][0] == "reader" and check_password(read_users(path)["reader"][1], password)
    assert ensure_users_file(cfg) is None  # kept as it is
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        ensure_users_file(cfg)
    path.chmod(0o600)
    path.write_text("analyst:root:pbkdf2-sha256:1:00:00\n")
    with pytest.raises(ConfigError, match="line 1"):
        ensure_users_file(cfg)


def test_serve_users_reads_the_password_from_stdin_never_the_command_line(tmp_path):
    root = tmp_path / "data"
    add = subprocess.run([CATALOGFS, "serve-users", "add", "analyst", "--role", "reader", "--password-stdin",
                          "--set", f"storage.data_root={root}"], input="a-long-password\n", capture_output=True,
                         text=True, timeout=60, env=server_env())
    assert add.returncode == 0, add.stderr
    assert "a-long-password" not in add.stdout + add.stderr
    listed = subprocess.run([CATALOGFS, "serve-users", "list", "--set", f"storage.data_root={root}"],
                            capture_output=True, text=True, timeout=60, env=server_env())
    assert listed.stdout.split() == ["analyst", "reader"]
    missing = subprocess.run([CATALOGFS, "serve-users", "remove", "nobody", "--set", f"storage.data_root={root}"],
                             capture_output=True, text=True, timeout=60, env=server_env())
    assert missing.returncode == 3 and "no user 'nobody'" in missing.stderr


def test_only_the_token_hash_is_written(tmp_path):
    path = write_token_hash(tmp_path, "the-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == hashlib.sha256(b"the-token").hexdigest()


@pytest.mark.parametrize("overrides,message", [
    (["server.bind_host=0.0.0.0", "server.jdbc_auth=none"], "server.jdbc_auth=password"),
    (["server.bind_host=0.0.0.0"], "server.tls"),
    (["server.connect_bind_host=0.0.0.0"], "Spark Connect has no TLS"),
])
def test_an_exposed_server_needs_logins_and_tls(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_exposure(_cfg(tmp_path, *overrides).server)


def test_tls_needs_both_files_and_makes_a_private_keystore(tmp_path):
    from tests.test_security import _self_signed

    with pytest.raises(ConfigError, match="both cert_file and key_file"):
        _cfg(tmp_path, "server.tls.cert_file=/x.pem")
    cert, key, _ = _self_signed(tmp_path)
    cfg = _cfg(tmp_path / "data", "server.bind_host=0.0.0.0", f"server.tls.cert_file={cert}",
               f"server.tls.key_file={key}")
    check_exposure(cfg.server)  # logins and TLS: allowed on a network
    settings, hidden = prepare_credentials(cfg, "tok")
    keystore = Path(settings["spark.hadoop.hive.server2.keystore.path"])
    assert settings["spark.hadoop.hive.server2.use.SSL"] == "true"
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert not any(hidden["hive.server2.keystore.password"] in value for value in settings.values())
    from cryptography.hazmat.primitives.serialization import pkcs12

    loaded = pkcs12.load_key_and_certificates(keystore.read_bytes(), hidden["hive.server2.keystore.password"].encode())
    assert loaded[1].subject.rfc4514_string() == "CN=localhost"
    with pytest.raises(ConfigError, match="server.tls.key_file"):
        write_keystore(cfg.server.tls.model_copy(update={"key_file": str(cert)}), tmp_path / "ks")
    # a readable key of a kind no keystore holds (key agreement only): a config error, not a traceback
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    x_key = tmp_path / "x25519.pem"
    x_key.write_bytes(x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="X25519PrivateKey cannot go into a TLS keystore"):
        write_keystore(cfg.server.tls.model_copy(update={"key_file": str(x_key)}), tmp_path / "ks")
