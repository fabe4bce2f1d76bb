"""Storage errors and their retries: the `StorageError` family, the classification of an error as
transient, missing, refused or permanent, and `with_retries`.

Every call a `Store` makes goes through `with_retries`: transient errors (timeouts, dropped connections,
HTTP 429/500/502/503/504, throttling) are retried with exponential backoff and full jitter; permanent
ones (access denied, missing bucket or key, rejected credentials) raise at once as a `StorageError`
naming the operation and the URL. On S3 the Store is the only retry layer (botocore's and s3fs's own
retries are switched off), so attempts are counted once.
"""

from __future__ import annotations

import errno as errno_codes
import logging
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tasks.infra.redaction import redact

log = logging.getLogger("vitonprep.storage")

T = TypeVar("T")


class StorageError(OSError):
    """A storage call failed. The message names the operation and the URL; it never holds a secret.

    Attributes: `operation`, `url`, `code` (the S3 error code or exception type), `attempts`,
    `transient` (True when retries ran out on a transient error).
    """

    operation: str = ""
    url: str = ""
    code: str = ""
    attempts: int = 1
    transient: bool = False


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A missing key, file or bucket."""


class StoragePermissionError(StorageError, PermissionError):
    """Access denied, or credentials the server rejects."""


class StorageUnavailableError(StorageError):
    """A transient error (timeout, 5xx, throttling) outlasted every retry."""

    transient = True


class NotARegularFileError(StorageError):
    """A FIFO, a device or a socket where a file was expected; it is never read."""


class UnsafePathError(StorageError):
    """A relative path that would leave the Store's root ('..', '//', a leading '/'); nothing is touched."""


class OutsideRootError(StorageError):
    """A local path whose symlinks lead outside the Store's root; it is neither read nor written."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**(n-1)))."""

    attempts: int = 5
    base: float = 0.2
    cap: float = 10.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        return rand() * min(self.cap, self.base * 2 ** (attempt - 1))


DEFAULT_RETRY = RetryPolicy()
_sleep = time.sleep  # looked up at each retry, so tests can record the backoff

TRANSIENT = "transient"
NOT_FOUND = "not_found"
PERMISSION = "permission"
PERMANENT = "permanent"

# S3 / AWS error codes (botocore's standard retry mode lists, plus S3's own).
THROTTLING_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
        "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
        "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "EC2ThrottledException",
    }
)  # fmt: skip
TRANSIENT_CODES = frozenset(
    {
        "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
        "PriorRequestNotComplete", "OperationAborted", "XAmzContentSHA256Mismatch",
        "500", "502", "503", "504", "429",
    }
)  # fmt: skip
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "NoSuchUpload", "NoSuchVersion", "404", "NotFound"})
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
     "RequestTimeTooSkewed", "InvalidSecurity"}
)  # fmt: skip
PERMISSION_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"}) | CREDENTIAL_CODES
TRANSIENT_ERRNOS = frozenset(
    {errno_codes.ETIMEDOUT, errno_codes.ECONNRESET, errno_codes.ECONNREFUSED, errno_codes.ECONNABORTED,
     errno_codes.EPIPE, errno_codes.EAGAIN, errno_codes.EIO, errno_codes.ENETUNREACH, errno_codes.EHOSTUNREACH,
     errno_codes.ESTALE}  # EIO and ESTALE: a network filesystem that lost its server for a while
)  # fmt: skip


def _optional_types(*paths: str) -> tuple[type, ...]:
    found = []
    for path in paths:
        module, _, name = path.rpartition(".")
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


# botocore/aiohttp/fsspec exception classes, when installed (local-only use needs none of them).
_CLIENT_ERROR = _optional_types("botocore.exceptions.ClientError")
_TRANSIENT_TYPES = _optional_types(
    "botocore.exceptions.HTTPClientError",  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
    "botocore.exceptions.ConnectionError",  # EndpointConnectionError, ConnectTimeoutError
    "botocore.exceptions.IncompleteReadError",
    "botocore.parsers.ResponseParserError",  # throttling answers with broken XML (s3fs#484)
    "aiohttp.ClientConnectionError",
    "aiohttp.ClientPayloadError",
    "fsspec.exceptions.FSTimeoutError",
) + (TimeoutError, socket.timeout, ConnectionError)
_CREDENTIAL_TYPES = _optional_types(
    "botocore.exceptions.NoCredentialsError",
    "botocore.exceptions.PartialCredentialsError",
    "botocore.exceptions.ProfileNotFound",
    "botocore.exceptions.CredentialRetrievalError",
)
STORAGE_TYPES = (
    (OSError,)
    + _CLIENT_ERROR
    + _TRANSIENT_TYPES
    + _CREDENTIAL_TYPES
    + _optional_types("botocore.exceptions.BotoCoreError")
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(error: BaseException) -> tuple[str, str]:
    """(kind, code) of a storage error: kind is TRANSIENT, NOT_FOUND, PERMISSION or PERMANENT.

    The S3 answer decides when there is one (s3fs raises Python errors with botocore's
    `ClientError` as their cause): its error code, else its HTTP status. Otherwise the exception
    type: timeouts and connection errors are transient, missing files and refused access are not.
    """
    links = list(_chain(error))
    for link in links:
        if _CLIENT_ERROR and isinstance(link, _CLIENT_ERROR):
            response = getattr(link, "response", None) or {}
            code = str((response.get("Error") or {}).get("Code") or "")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code in THROTTLING_CODES or code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
                return TRANSIENT, code or str(status)
            if code in NOT_FOUND_CODES or status == 404:
                return NOT_FOUND, code or "404"
            if code in PERMISSION_CODES or status == 403:
                return PERMISSION, code or "403"
            return PERMANENT, code or str(status or type(link).__name__)
    if isinstance(error, FileNotFoundError):
        return NOT_FOUND, "FileNotFoundError"
    if isinstance(error, PermissionError):
        return PERMISSION, "PermissionError"
    for link in links:
        if _CREDENTIAL_TYPES and isinstance(link, _CREDENTIAL_TYPES):
            return PERMISSION, type(link).__name__
        if isinstance(link, _TRANSIENT_TYPES):
            return TRANSIENT, type(link).__name__
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
        return TRANSIENT, errno_codes.errorcode.get(error.errno, "OSError")
    return PERMANENT, type(error).__name__


def _reason(kind: str, code: str, url: str, detail: str) -> str:
    if code == "NoSuchBucket":
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        return f"bucket {bucket!r} does not exist (NoSuchBucket)"
    if kind == NOT_FOUND:
        return "does not exist" + ("" if code == "FileNotFoundError" else f" ({code})")
    if code in CREDENTIAL_CODES or (_CREDENTIAL_TYPES and code in {t.__name__ for t in _CREDENTIAL_TYPES}):
        return f"the credentials were refused or are missing ({code}): {detail}"
    if kind == PERMISSION:
        return f"access denied ({code}); check the credentials and the bucket policy"
    return f"{code}: {detail}" if detail and code not in detail else detail or code


def storage_error(error: BaseException, operation: str, url: str, attempts: int = 1) -> StorageError:
    """A `StorageError` (of the matching subclass) for `error`, with a message free of secrets."""
    kind, code = classify(error)
    detail = str(error) or type(error).__name__
    if kind == TRANSIENT:
        message = f"{operation} {url} failed after {attempts} attempts: {code}: {detail}"
        cls: type[StorageError] = StorageUnavailableError
    else:
        message = f"{operation} {url} failed: {_reason(kind, code, url, detail)}"
        cls = {NOT_FOUND: StorageNotFoundError, PERMISSION: StoragePermissionError}.get(kind, StorageError)
    result = cls(redact(message))
    result.operation, result.url, result.code = operation, redact(url), code
    result.attempts, result.transient = attempts, kind == TRANSIENT
    return result


def with_retries(
    call: Callable[[], T],
    operation: str,
    url: str,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """`call()`, retried on transient storage errors; storage errors come out as `StorageError`.

    Errors that are no storage errors (a ValueError from bad arguments, say) pass through as they are.
    """
    policy = policy or DEFAULT_RETRY
    attempt = 1
    while True:
        try:
            return call()
        except StorageError:
            raise
        except STORAGE_TYPES as error:
            kind, code = classify(error)
            if kind == TRANSIENT and attempt < policy.attempts:
                delay = policy.delay(attempt)
                log.warning(
                    "%s %s: transient %s (attempt %d of %d); retrying in %.2f s",
                    operation, redact(url), code, attempt, policy.attempts, delay,
                )  # fmt: skip
                (sleep or _sleep)(delay)
                attempt += 1
                continue
            raise storage_error(error, operation, url, attempt) from None
