"""Who may act: the holder of the operator's token (``[dashboard] token_file``), given as a
bearer token (scripts) or once on the sign-in page (a browser, which then holds a session
cookie for COOKIE_MAX_AGE_S: HttpOnly, SameSite=Strict, Secure over HTTPS). Everyone else
reads only, and off loopback not even that."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

from starlette.requests import Request

from shared_schema.config_files import ConfigFileError

COOKIE = "amstream_dashboard"
COOKIE_MAX_AGE_S = 12 * 3600
MIN_TOKEN = 16


class Auth:
    def __init__(self, token: str | None, secure: bool) -> None:
        self._token = None if token is None else token.encode()
        self.secure = secure  # the cookie goes over HTTPS only

    @classmethod
    def from_file(cls, path: Path | None, secure: bool) -> Auth:
        """The token in ``path`` (its first line); None: nobody may act."""
        if path is None:
            return cls(None, secure)
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ConfigFileError(
                f"[dashboard] token_file {path}: {why}: write one, e.g."
                f" openssl rand -hex 16 > {path}"
            ) from exc
        if len(token) < MIN_TOKEN:
            raise ConfigFileError(
                f"[dashboard] token_file {path}: the token has {len(token)} characters, needs"
                f" {MIN_TOKEN} or more: openssl rand -hex 16 > {path}"
            )
        return cls(token, secure)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def checks(self, token: str) -> bool:
        """``token`` is the operator's (compared as bytes: any text, in constant time)."""
        given = token.encode(errors="surrogateescape")
        return self._token is not None and hmac.compare_digest(given, self._token)

    def allows(self, request: Request) -> bool:
        """The request carries the token (``Authorization: Bearer``) or a live session cookie."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.checks(given.strip()):
            return True
        return self._valid_session(request.cookies.get(COOKIE, ""))

    def session(self, now: float | None = None) -> str:
        """A new session cookie's value: its time of issue and a MAC of it under the token (a
        new token signs everyone out; every cookie dies after COOKIE_MAX_AGE_S)."""
        issued = str(int(time.time() if now is None else now))
        return f"{issued}.{self._mac(issued)}"

    def _valid_session(self, value: str) -> bool:
        issued, _, mac = value.partition(".")
        if self._token is None or not issued.isdigit():
            return False
        fresh = 0 <= time.time() - int(issued) < COOKIE_MAX_AGE_S
        return fresh and hmac.compare_digest(mac.encode(errors="surrogateescape"),
                                             self._mac(issued).encode())  # fmt: skip

    def _mac(self, issued: str) -> str:
        assert self._token is not None
        message = f"amstream-dashboard-session:{issued}".encode()
        return hmac.new(self._token, message, hashlib.sha256).hexdigest()
