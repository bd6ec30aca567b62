"""The shapes of the API's 2xx answers: a page, an object, a download URL.

Each parser takes the request's label (for its message) and the answer's JSON, and
returns what the answer says or raises an `ApiTransportError`: JSON of another shape is
not the API talking (a proxy, a broken deploy), and is retried like a bad status. Pure:
the time a download URL's `expires_in` counts from is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botasync.api.models import normalize_ts, to_count, to_number, to_ts
from botasync.errors import ApiTransportError, PaginationError

MAX_EXPIRES_IN_S = 7 * 24 * 3600  # a longer `expires_in` is not believed (S3 allows 7 days)


@dataclass(frozen=True)
class Page:
    """One page of `GET /recordings`: the items as received (unvalidated), `has_more`, and
    the deployed dialect's `next_cursor` (None where the API pages by offset, or at the end)."""

    items: list[Any]
    has_more: bool
    next_cursor: str | None = None


@dataclass(frozen=True)
class DownloadUrl:
    """A pre-signed URL for one file, read from either dialect's download-url answer.

    The URL is a credential, so repr hides it. `content_type` and `file_size_bytes` are
    None when the API does not say; `expires_at` comes from `expires_at` (documented) or
    from `expires_in` and the clock (deployed), and is None when neither is usable.
    """

    url: str = field(repr=False)
    media_id: str | None
    content_type: str | None
    file_size_bytes: int | None
    expires_at: str | None


def shape_error(label: str, what: str) -> ApiTransportError:
    """A 2xx JSON answer that is not the documented shape (a proxy, a broken deploy)."""
    return ApiTransportError(f"{label}: response is {what}", status=200)


def page(label: str, data: Any) -> Page:
    """A list answer: `data` a list and `has_more` a bool, or it is not the API talking."""
    if not (
        isinstance(data, dict)
        and isinstance(data.get("data"), list)
        and isinstance(data.get("has_more"), bool)
    ):
        raise shape_error(label, "not a page (`data` list and `has_more` bool)")
    cursor = data.get("next_cursor")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise shape_error(label, "a page whose `next_cursor` is not a non-empty string")
    if not data["data"] and data["has_more"]:
        # believed, it would walk on forever: no item ever tells the walk it is done
        raise PaginationError(
            f"{label}: an empty page that says more follow (`has_more` true); "
            "the walk stops here", status=200)
    return Page(items=data["data"], has_more=data["has_more"], next_cursor=cursor)


def one_object(what: str) -> Callable[[str, Any], Any]:
    """A detail answer that must be one JSON object (its fields are the caller's business)."""

    def parse(label: str, data: Any) -> Any:
        if not isinstance(data, dict):
            raise shape_error(label, f"not a {what} object")
        return data

    return parse


def download_url(label: str, data: Any, now_epoch: float) -> DownloadUrl:
    """Either dialect's download-url answer; only the URL itself is required.

    Documented: `{download_url, media_id, content_type, file_size_bytes, expires_at}`.
    Deployed: `{download_url, expires_in, content_type (nullable), file_size_bytes (an
    int, a decimal string or null)}`. A field that is missing or unreadable is None.
    """
    if not isinstance(data, dict):
        raise shape_error(label, "not a download-url object")
    url = data.get("download_url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise shape_error(label, "a download-url object without an http(s) `download_url`")
    content_type, media_id = data.get("content_type"), data.get("media_id")
    return DownloadUrl(
        url=url,
        media_id=media_id if isinstance(media_id, str) else None,
        content_type=content_type if isinstance(content_type, str) and content_type else None,
        file_size_bytes=to_count(data.get("file_size_bytes")),
        expires_at=_expiry(data, now_epoch),
    )


def _expiry(data: Mapping[str, Any], now_epoch: float) -> str | None:
    """`expires_at` as sent, or now plus `expires_in` seconds; None when neither reads."""
    at = to_ts(data.get("expires_at"))
    if at is not None:
        return at
    seconds = to_number(data.get("expires_in"))
    if seconds is None or seconds <= 0 or seconds > MAX_EXPIRES_IN_S:
        return None
    when = datetime.fromtimestamp(now_epoch + float(seconds), UTC)
    return normalize_ts(when.isoformat())
