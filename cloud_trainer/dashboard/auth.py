"""Who may act: the holder of the operator's token (``[dashboard] token_file``), given as a
bearer token (scripts) or once on the sign-in page (a browser, which then holds a session
cookie: HttpOnly, SameSite=Strict, Secure over HTTPS). Everyone else reads only."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.requests import Request

from shared_schema.config_files import ConfigFileError

COOKIE = "amstream_dashboard"
COOKIE_MAX_AGE_S = 12 * 3600
MIN_TOKEN = 16


class Auth:
    def __init__(self, token: str | None, secure: bool) -> None:
        self._token = token
        self.secure = secure  # the cookie goes over HTTPS only
        # what the cookie holds: derived from the token, so a new token signs everyone out
        self._session = None if token is None else _mac(token, "session")

    @classmethod
    def from_file(cls, path: Path | None, secure: bool) -> Auth:
        """The token in ``path`` (its first line); None: nobody may act."""
        if path is None:
            return cls(None, secure)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigFileError(
                f"[dashboard] token_file {path}: {exc.strerror}: write one, e.g."
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
        return self._token is not None and hmac.compare_digest(token, self._token)

    def allows(self, request: Request) -> bool:
        """The request carries the token (``Authorization: Bearer``) or a session cookie."""
        if self._session is None:
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.checks(given.strip()):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, ""), self._session)

    @property
    def session(self) -> str:
        assert self._session is not None
        return self._session


def _mac(token: str, purpose: str) -> str:
    return hmac.new(
        token.encode(), f"amstream-dashboard-{purpose}".encode(), hashlib.sha256
    ).hexdigest()
