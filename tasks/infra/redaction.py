"""Secrets out of every message: `redact` strips anything that looks like a credential, and every secret
value a Store was given (`register_secrets`) or the environment holds, so no log line, error message or
repr carries one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

SECRET_OPTION_NAMES = frozenset(
    {
        "key", "secret", "token", "username", "password", "passwd", "passphrase",
        "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "access_key", "secret_key",
        "access_key_id", "secret_access_key", "session_token", "security_token", "sas_token",
        "account_key", "client_secret", "credential", "credentials", "authorization", "api_key",
    }
)  # fmt: skip
SECRET_ENV_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
MIN_SECRET_CHARS = 8  # shorter values are too common to scrub from messages verbatim
MASK = "***"

_known_secrets: set[str] = set()

_PATTERNS = [
    # key=value / "key": "value" for credential-looking names
    (
        re.compile(
            r"(?i)(\b(?:aws_secret_access_key|aws_session_token|aws_access_key_id|aws_security_token|"
            r"secret_access_key|access_key_id|session_token|security_token|secret|password|passwd|token|"
            r"credential|signature|x-amz-security-token|x-amz-credential|x-amz-signature|authorization)"
            r"""\b["']?\s*[:=]\s*["']?)([^\s"',;&}\]]+)"""
        ),
        rf"\1{MASK}",
    ),
    # user:password@ in URLs
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), rf"\1{MASK}@"),
    # AWS access key ids
    (re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}\b"), MASK),
    # AWS secret access keys: a run of exactly 40 base64 characters with upper, lower and digits
    # (not starting with "/", so that URL and file paths are left alone)
    (
        re.compile(
            r"(?<![A-Za-z0-9/+=])(?!/)(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[0-9])"
            r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
        ),
        MASK,
    ),
    # session tokens and other long base64 blobs
    (re.compile(r"(?<![A-Za-z0-9/+=])(?!/)[A-Za-z0-9/+]{100,}={0,2}"), MASK),
]


def _secret_values(options: Any) -> Iterator[str]:
    """String values under credential-looking names, at any depth of an options mapping."""
    if isinstance(options, Mapping):
        for name, value in options.items():
            if str(name).lower() in SECRET_OPTION_NAMES and isinstance(value, str):
                yield value
            else:
                yield from _secret_values(value)
    elif isinstance(options, list | tuple):
        for value in options:
            yield from _secret_values(value)


def register_secrets(storage_options: Mapping[str, Any] | None) -> None:
    """Remember the secret values of `storage_options` so `redact` scrubs them wherever they appear."""
    for value in _secret_values(storage_options or {}):
        if len(value) >= MIN_SECRET_CHARS:
            _known_secrets.add(value)


def redact(text: str) -> str:
    """`text` without anything that looks like a credential: AWS key ids, secret keys, session
    tokens, `secret=...`-style values, URL passwords, and every secret value a Store was given or
    the environment holds."""
    text = str(text)
    secrets = set(_known_secrets)
    secrets.update(v for name in SECRET_ENV_NAMES if len(v := os.environ.get(name, "")) >= MIN_SECRET_CHARS)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
