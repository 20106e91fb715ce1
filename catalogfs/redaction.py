"""Keep secrets out of logs, MLflow params, reports and error messages.

A config value is secret when its dotted key has a part that looks like one (``secret``,
``password``, ``token``, ``credential``, ``key`` …, the same idea as Spark's
``spark.redaction.regex``), e.g. ``spark.settings.spark.hadoop.fs.s3a.secret.key``. Any URI keeps
its user name but loses its password (``https://user:***@host``), and query parameters with secret
names lose their values. :func:`secret_values` collects the secret strings of a config so that
free text (log records, messages) can be scrubbed of them wherever they turn up.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable, Mapping

MASK = "***"
_SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "apikey", "api_key", "private_key",
                 "sas", "signature", "accesskey")
_KEY_PART = re.compile(r"(^|[._\-])(key|pwd|auth)$", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]+)@")
_QUERY_SECRET = re.compile(r"(?P<name>[?&;][^=&;#\s]*?(?:secret|password|passwd|token|key|signature|sig|"
                           r"credential)[^=&;#\s]*=)(?P<value>[^&;#\s]+)", re.IGNORECASE)
_MIN_SCRUB_LENGTH = 4  # shorter "secrets" would scrub ordinary words out of every log line


_NOT_SECRET = {"server.jdbc_auth"}  # names a login mode (password | none), not a credential


def is_secret_key(key: str) -> bool:
    """True when a (dotted) config or parameter key names a secret."""
    lowered = key.lower()
    if lowered in _NOT_SECRET:
        return False
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    return any(_KEY_PART.search(part) for part in re.split(r"[.]", key) if part)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URI passwords, secret query values and each of ``secrets`` replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", text)
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SCRUB_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` (nested mappings, lists, strings) safe to log: values under secret keys
    become ``***``, strings lose URI passwords."""
    if isinstance(value, Mapping):
        return {k: redact(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, key) for v in value)
    if key and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    return value


def secret_values(data: Any, key: str = "") -> set[str]:
    """Every secret string in ``data`` (a config dump): values under secret keys and URI passwords."""
    found: set[str] = set()
    if isinstance(data, Mapping):
        for k, v in data.items():
            found |= secret_values(v, f"{key}.{k}" if key else str(k))
    elif isinstance(data, (list, tuple)):
        for v in data:
            found |= secret_values(v, key)
    elif isinstance(data, str) and data:
        if key and is_secret_key(key):
            found.add(data)
        found |= {m["password"] for m in _USERINFO.finditer(data)}
        found |= {m["value"] for m in _QUERY_SECRET.finditer(data)}
    return found


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record's message without the known secrets."""

    def __init__(self) -> None:
        super().__init__("catalogfs.redaction")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let logging report it as usual
            return True
        clean = redact_text(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact_text(text, self.secrets)
        return True


_FILTER = RedactingFilter()


def install_log_redaction(secrets: Iterable[str]) -> None:
    """Scrub ``secrets`` (and URI passwords) from every record that the root logger's handlers
    emit from now on. Safe to call again: the secrets are added to the same filter."""
    _FILTER.secrets |= set(secrets)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
