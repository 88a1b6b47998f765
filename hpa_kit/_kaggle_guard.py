"""Guards around the kaggle client: a timeout on every request, credentials kept out of output.

Used by :mod:`hpa_kit.delivery`. The kaggle client (kaggle 2.2.5, kagglesdk 0.1.38) makes
its own ``requests`` sessions (one per API client, one per file upload) and gives them no
timeout, so a server that accepts the connection and never answers blocks it forever. It
also retries a lot: urllib3 retries an upload ``PUT`` up to 10 times, ``with_retry`` retries
connect errors 10 times with back-off, and an upload that raises anything is resumed up to
10 times. While :func:`guarded` is active:

- every request sent by a ``requests.Session`` gets a socket timeout when its caller gave
  none: ``upload`` seconds for a ``PUT`` (the file uploads), ``api`` seconds for the rest.
  It bounds each wait of the request (connecting, sending one block, receiving), not the
  whole transfer, so a large upload that keeps moving is never cut;
- a request that times out is not retried: :class:`RequestTimedOut` ends the whole step. It
  derives from ``BaseException`` so that the client's ``except Exception`` retry loops let
  it through (the same reason ``KeyboardInterrupt`` does);
- ``sys.stdout`` and ``sys.stderr`` pass, line by line, through :func:`redact`, so what the
  client prints (progress, retry messages that quote a server reply) shows no credential.

:func:`remember_secret` adds a credential value; :func:`redact` replaces each one
remembered, and the current values of ``KAGGLE_KEY`` and ``KAGGLE_API_TOKEN``, by ``***``.

>>> remember_secret("0123-doc-example-key")
>>> redact("HTTP 401: unknown key 0123-doc-example-key")
'HTTP 401: unknown key ***'
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Any, TextIO
from urllib.parse import urlsplit

__all__ = ["SECRET_ENV_VARS", "RequestTimedOut", "guarded", "redact", "remember_secret"]

SECRET_ENV_VARS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")
_MIN_SECRET_LEN = 4  # shorter values would blank out ordinary words
_secrets: set[str] = set()
_guard_lock = threading.Lock()


def remember_secret(value: object) -> None:
    """Add a credential to those :func:`redact` removes (non-strings and short values are
    ignored)."""
    if isinstance(value, str) and len(value.strip()) >= _MIN_SECRET_LEN:
        _secrets.add(value.strip())


def redact(text: str) -> str:
    """``text`` with every remembered credential, and those in the environment, as ``***``."""
    values = set(_secrets)
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if len(value) >= _MIN_SECRET_LEN:
            values.add(value)
    for value in sorted(values, key=len, reverse=True):  # longest first: one may contain another
        text = text.replace(value, "***")
    return text


class RequestTimedOut(BaseException):  # noqa: N818 - named like KeyboardInterrupt
    """A request to the Kaggle service got no answer in time; ends the step without retries.

    ``request`` is the method and URL (without its query, which may hold a signed token);
    ``seconds`` the limit; ``upload`` whether it was a file upload.
    """

    def __init__(self, request: str, seconds: float, *, upload: bool) -> None:
        super().__init__(f"no answer to {request} within {seconds:g} s")
        self.request, self.seconds, self.upload = request, seconds, upload


@contextmanager
def guarded(*, api_timeout: float, upload_timeout: float) -> Iterator[None]:
    """Timeouts on every request and redacted ``stdout``/``stderr`` for the block's duration.

    Process-wide while active (it patches ``requests.Session.send``); one block at a time.
    """
    with _guard_lock:
        out, err = _RedactingStream(sys.stdout), _RedactingStream(sys.stderr)
        try:
            with (
                redirect_stdout(out),
                redirect_stderr(err),
                _request_timeouts(api_timeout, upload_timeout),
            ):
                yield
        finally:
            out.finish()
            err.finish()


@contextmanager
def _request_timeouts(api: float, upload: float) -> Iterator[None]:
    import requests
    from urllib3.util.retry import Retry

    original = requests.Session.send

    def send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        is_upload = request.method == "PUT"
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = upload if is_upload else api
        limit = kwargs["timeout"]
        adapter = self.get_adapter(url=request.url)
        retries = getattr(adapter, "max_retries", None)
        if isinstance(retries, Retry):  # no silent retry of a timed-out connect or read
            adapter.max_retries = retries.new(connect=0, read=False)
        try:
            return original(self, request, **kwargs)
        except Exception as exc:
            if _is_timeout(exc):
                where = f"{request.method} {_without_query(request.url)}"
                seconds = limit if isinstance(limit, (int, float)) else max(limit)
                raise RequestTimedOut(where, seconds, upload=is_upload) from None
            raise
        finally:
            if isinstance(retries, Retry):
                adapter.max_retries = retries

    requests.Session.send = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        requests.Session.send = original  # type: ignore[method-assign]


def _is_timeout(exc: BaseException) -> bool:
    """Whether a timeout is at the root of ``exc`` (requests wraps urllib3's, which wraps the
    socket's, in several ways: a read timeout while reading a body is a ConnectionError)."""
    import requests
    import urllib3

    kinds = (TimeoutError, requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kinds):
            return True
        linked = [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
        stack.extend(x for x in linked if isinstance(x, BaseException))
    return False


def _without_query(url: str) -> str:
    """
    >>> _without_query("https://storage.example/upload/b1?X-Goog-Signature=abc")
    'https://storage.example/upload/b1'
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class _RedactingStream(io.TextIOBase):
    """A text stream that writes whole lines (ended by ``\\n`` or ``\\r``) to ``target``,
    redacted; a credential split over two writes is still caught."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self._target = target
        self._pending = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(getattr(self._target, "isatty", lambda: False)())

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
        if cut:
            self._target.write(redact(self._pending[:cut]))
            self._pending = self._pending[cut:]
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def finish(self) -> None:
        """Write what is left (an unterminated last line)."""
        if self._pending:
            self._target.write(redact(self._pending))
            self._pending = ""
        self._target.flush()
