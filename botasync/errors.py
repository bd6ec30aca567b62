"""The exceptions botasync raises, one tree with one base.

```
BotasyncError
  ConfigError          bad file, key or value
  ApiError             .status .code .request_id
    AuthError          401, 403
    BadRequest         400: a bug or a bad filter; never retried
    NotFound           404, confirms a deletion
    RateLimited        429, .retry_after
    ServerError        5xx
    PaginationError    pages that do not chain (repeated cursor, `has_more` with nothing next)
    ApiTransportError  connect, timeout, malformed body
  StoreError
    MigrationError
    LeaseLost          a worker's write refused: its lease moved to another worker
  HandlerError         recorded on the delivery, never escapes the dispatcher
```

`retryable` tells a caller whether trying the same call again can help.
"""

from __future__ import annotations


class BotasyncError(Exception):
    """Base of every error botasync raises on purpose."""

    retryable = False
    exit_code = 1


class ConfigError(BotasyncError):
    """The configuration file, a key or a value is wrong."""

    exit_code = 2


class ApiError(BotasyncError):
    """The Bota API answered with an error, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id


class AuthError(ApiError):
    """401 or 403: the key is rejected or lacks a scope; retrying cannot help."""

    exit_code = 3


class BadRequest(ApiError):
    """400: the request itself is wrong (a bug or a bad filter value)."""


class NotFound(ApiError):
    """404: the recording does not exist (any more)."""


class RateLimited(ApiError):
    """429: over the rate limit; wait `retry_after` seconds (None: the server gave no hint)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after  # None: the server did not say (back off exponentially)


class ServerError(ApiError):
    """5xx: Bota's side failed; back off and retry."""

    retryable = True


class PaginationError(ApiError):
    """The pages do not chain (a repeated cursor, more promised with no way to it): the
    walk stops here; the next pass starts it again."""


class ApiTransportError(ApiError):
    """Connection refused or dropped, timeout, or a body that is not the JSON promised."""

    retryable = True


class StoreError(BotasyncError):
    """The database could not be opened, read or written."""


class MigrationError(StoreError):
    """The database schema cannot be brought to this version (for example, it is newer)."""


class LeaseLost(StoreError):
    """A write for work whose lease this worker no longer holds (it expired, and another
    worker may have it): refused, so two workers never write one project at once."""


class HandlerError(BotasyncError):
    """A handler failed to take an event; recorded on the delivery, retried later."""
