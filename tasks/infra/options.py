"""The fsspec options of a URL: the run's `storage_options`, completed from the environment, plus the run's
credentials; which option names carry a credential; a copy of the options fit for logs.

Credentials are left to s3fs/botocore, which read `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
`AWS_SESSION_TOKEN` and `~/.aws` themselves.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from typing import Any

import fsspec

from tasks.infra.redaction import register_secrets

ENDPOINT_ENV = ("VITONPREP_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENV = ("VITONPREP_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
PROFILE_ENV = ("VITONPREP_S3_PROFILE", "AWS_PROFILE")
S3_PROTOCOLS = ("s3", "s3a")
LOCAL_PROTOCOLS = ("file", "local", "memory")


def _first_env(names: tuple[str, ...], environ: Mapping[str, str]) -> str | None:
    return next((environ[name] for name in names if environ.get(name)), None)


def resolve_storage_options(
    url: str, storage_options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The fsspec options for `url`: the given ones, completed from the environment.

    For `s3://`: `endpoint_url` from `VITONPREP_S3_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3` or
    `AWS_ENDPOINT_URL`; `client_kwargs.region_name` from `VITONPREP_S3_REGION`, `AWS_REGION` or
    `AWS_DEFAULT_REGION`; `profile` from `VITONPREP_S3_PROFILE` or `AWS_PROFILE` (unless explicit
    keys are given). Explicit options always win, then fsspec's own configuration. botocore's own
    retries are switched off (`config_kwargs.retries`) because the Store retries every call itself.
    Other protocols get their options unchanged.
    """
    options = copy.deepcopy(dict(storage_options or {}))
    protocol = fsspec.utils.get_protocol(url)
    if _run_credentials and protocol not in LOCAL_PROTOCOLS:
        options.update(copy.deepcopy(_run_credentials))
    if protocol not in S3_PROTOCOLS:
        return options
    # fsspec reads none of the names below: only FSSPEC_S3_<KEY> variables and ~/.config/fsspec, which it
    # applies itself when it builds the filesystem, under the options it is given. So its configured values
    # count as given here: a default from the environment never overrides one, and the client_kwargs and
    # config_kwargs set below keep theirs (fsspec would replace a whole dict, not merge it).
    options = copy.deepcopy(fsspec.config.apply_config(fsspec.get_filesystem_class(protocol), options))
    env = os.environ if environ is None else environ
    client_kwargs = dict(options.get("client_kwargs") or {})
    config_kwargs = dict(options.get("config_kwargs") or {})
    if not options.get("endpoint_url") and not client_kwargs.get("endpoint_url"):
        endpoint = _first_env(ENDPOINT_ENV, env)
        if endpoint:
            options["endpoint_url"] = endpoint
    if not client_kwargs.get("region_name") and not config_kwargs.get("region_name"):
        region = _first_env(REGION_ENV, env)
        if region:
            client_kwargs["region_name"] = region
    explicit_keys = any(options.get(name) for name in ("key", "secret", "username", "password", "session"))
    if "profile" not in options and not explicit_keys:
        profile = _first_env(PROFILE_ENV, env)
        if profile:
            options["profile"] = profile
    config_kwargs.setdefault("retries", {"total_max_attempts": 1})
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    options["config_kwargs"] = config_kwargs
    return options


# Option names that carry a credential, at any depth of storage_options (key, secret, token, password,
# session, credentials and their AWS/Azure/GCS spellings). Such options never travel as a parameter.
CREDENTIAL_NAME = re.compile(
    r"(?i)(^key$|_key$|secret|token|passw|credential|session|^username$|^authorization$|signature)"
)


def credential_options(options: Any, path: str = "") -> list[str]:
    """The dotted names of credential-shaped options in `options` (`client_kwargs.aws_secret_access_key`)."""
    found: list[str] = []
    if isinstance(options, Mapping):
        for name, value in options.items():
            dotted = f"{path}.{name}" if path else str(name)
            if CREDENTIAL_NAME.search(str(name)):
                found.append(dotted)
            else:
                found += credential_options(value, dotted)
    elif isinstance(options, list | tuple):
        for value in options:
            found += credential_options(value, path)
    return found


_run_credentials: dict[str, Any] = {}


def use_credentials(credentials: Mapping[str, Any]) -> None:
    """Credentials every Store of this process adds to its options (a Prefect Secret block's value,
    loaded where the run runs): they reach fsspec, never a flow parameter, log or manifest."""
    register_secrets(credentials)
    _run_credentials.clear()
    _run_credentials.update(copy.deepcopy(dict(credentials)))
