"""The dashboard's web app (Starlette): server-rendered pages that a small script keeps live
over server-sent events, the JSON they read, the overlay picture, and the actions.

    GET  /                              the fleet: a row per device
    GET  /devices/{id}                  one device: mIoU over time, overlay, updates, actions
    GET  /api/fleet, /api/devices/{id}  the same as JSON
    GET  /api/events, /api/devices/{id}/events   ... as server-sent events, on each change
    GET  /devices/{id}/frame.jpg        the newest probed frame, device's and teacher's labels
    POST /api/devices/{id}/actions      {"kind": "pause" | "resume" | "rollback" | "sampling",
                                        ...}: the operator's token or session only
    GET, POST /login; POST /logout

Every page sends a strict Content-Security-Policy (scripts and styles from this server only),
and actions take JSON alone, so no other site's form can submit one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cloud_trainer.dashboard.actions import Action
from cloud_trainer.dashboard.auth import COOKIE, COOKIE_MAX_AGE_S, Auth
from cloud_trainer.dashboard.config import LOOPBACK_NAMES
from cloud_trainer.dashboard.overlay import overlay_jpeg
from cloud_trainer.dashboard.state import ActionEntry, FleetState
from shared_schema.counters import Counters

log = logging.getLogger(__name__)

# A device's action, handed to the daemon: it runs it on its worker and reports back into
# the state's log (``FleetState.action_done``).
Submit = Callable[[str, Action, ActionEntry], None]

LIVE_CHECK_S = 0.5  # how often a live view looks for a change
HEARTBEAT_S = 15.0  # a comment line on a quiet stream, so proxies keep it open
MAX_ACTION_BYTES = 4096
WRONG_TOKEN_S = 1.0  # an answer to a wrong token waits this long: a guess per second
_ACTION = TypeAdapter(Action)
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; object-src 'none';"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class Dashboard:
    def __init__(
        self,
        state: FleetState,
        auth: Auth,
        submit: Submit,
        counters: Counters | None = None,
        *,
        hosts: list[str] | None = None,
        private: bool = False,
    ) -> None:
        """``hosts``: the Host names requests may carry (default: loopback's); ``private``:
        every page needs the token, not only the actions."""
        self.state = state
        self.auth = auth
        self.private = private
        self._submit = submit
        self.counters = counters or Counters()
        self.stopping = asyncio.Event()  # set from uvicorn's loop: the live views end
        folder = files("cloud_trainer.dashboard")
        self._templates = Environment(
            loader=FileSystemLoader(str(folder / "templates")),
            autoescape=select_autoescape(default=True),
        )
        static = StaticFiles(directory=str(folder / "static"))
        self.app = Starlette(
            routes=[
                Route("/", self.fleet_page),
                Route("/devices/{device_id}", self.device_page),
                Route("/devices/{device_id}/frame.jpg", self.frame),
                Route("/api/fleet", self.fleet_json),
                Route("/api/events", self.fleet_events),
                Route("/api/devices/{device_id}", self.device_json),
                Route("/api/devices/{device_id}/events", self.device_events),
                Route("/api/devices/{device_id}/actions", self.act, methods=["POST"]),
                Route("/login", self.login_page),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Mount("/static", static, name="static"),
            ]
        )
        # outermost last: the Host check, then the headers on every answer, then privacy
        self.app.add_middleware(_Private, dashboard=self)
        self.app.add_middleware(_SecurityHeaders)
        self.app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts or LOOPBACK_NAMES)

    # -- pages -----------------------------------------------------------------------------

    def _page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        template = self._templates.get_template(name)
        signed_in = self.auth.allows(request)
        html = template.render(
            signed_in=signed_in, can_act=self.auth.enabled, path=request.url.path, **context
        )
        return HTMLResponse(html, status_code=status)

    async def fleet_page(self, request: Request) -> Response:
        return self._page(request, "fleet.html", fleet=self.state.fleet())

    async def device_page(self, request: Request) -> Response:
        device_id = request.path_params["device_id"]
        device = self.state.device(device_id)
        if device is None:
            return self._page(request, "missing.html", 404, device_id=device_id)
        return self._page(request, "device.html", device_id=device_id, device=device)

    async def frame(self, request: Request) -> Response:
        found = self.state.frame(request.path_params["device_id"])
        if found is None:
            return Response("no frame probed yet", status_code=404, media_type="text/plain")
        seq, view = found
        body = await asyncio.to_thread(overlay_jpeg, view)
        headers = {"Cache-Control": "no-store", "X-Frame-Seq": str(seq)}
        return Response(body, media_type="image/jpeg", headers=headers)

    # -- JSON and live views ---------------------------------------------------------------

    async def fleet_json(self, request: Request) -> Response:
        return Response(self.state.fleet_json(), media_type="application/json")

    async def device_json(self, request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not self.state.has(device_id):
            return _error(404, "no such device")
        return Response(self.state.device_json(device_id), media_type="application/json")

    async def fleet_events(self, request: Request) -> Response:
        return self._live(request, self.state.fleet_json)

    async def device_events(self, request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not self.state.has(device_id):
            return _error(404, "no such device")
        return self._live(request, lambda: self.state.device_json(device_id))

    def _live(self, request: Request, snapshot: Callable[[], str]) -> Response:
        async def stream() -> AsyncIterator[str]:
            sent, quiet = None, 0.0
            while not self.stopping.is_set() and not await request.is_disconnected():
                changed = self.state.changed
                if changed != sent:
                    sent, quiet = changed, 0.0
                    yield f"data: {snapshot()}\n\n"
                elif quiet >= HEARTBEAT_S:
                    quiet = 0.0
                    yield ": quiet\n\n"
                await asyncio.sleep(LIVE_CHECK_S)
                quiet += LIVE_CHECK_S

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    # -- actions ---------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        device_id = request.path_params["device_id"]
        refusal = self._refusal(request, device_id)
        if refusal is not None:
            status, reason = refusal
            self.counters.inc(f"dashboard.actions_refused.{status}")
            log.warning("dashboard: action on %s from %s refused: %s", device_id,
                        _remote(request), reason)  # fmt: skip
            if status == 401:
                await asyncio.sleep(WRONG_TOKEN_S)  # a guess per second at most, per connection
            return _error(status, reason)
        body = await _bounded_body(request)
        if body is None:
            self.counters.inc("dashboard.actions_refused.413")
            return _error(413, f"an action is at most {MAX_ACTION_BYTES} bytes")
        try:
            action = _ACTION.validate_json(body)
        except ValidationError as exc:
            self.counters.inc("dashboard.actions_refused.422")
            return _error(422, _first_error(exc))
        entry = self.state.action(device_id, action.model_dump(), _remote(request))
        self._submit(device_id, action, entry)
        self.counters.inc("dashboard.actions")
        return JSONResponse({"id": entry.id, "state": entry.state}, status_code=202)

    def _refusal(self, request: Request, device_id: str) -> tuple[int, str] | None:
        if not self.auth.enabled:
            return 403, "this dashboard is read-only: set [dashboard] token_file to act"
        if not self.auth.allows(request):
            return 401, "sign in (/login) or send Authorization: Bearer <token>"
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return 415, "send the action as application/json"
        if not self.state.has(device_id):
            return 404, "no such device"
        return None

    async def login_page(self, request: Request) -> Response:
        return self._page(request, "login.html", next=_local(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        form = await _small_form(request)
        target = _local(form.get("next", "/"))
        if not self.auth.checks(form.get("token", "")):
            self.counters.inc("dashboard.logins_refused")
            log.warning("dashboard: a wrong token from %s", _remote(request))
            await asyncio.sleep(WRONG_TOKEN_S)
            return self._page(request, "login.html", 401, next=target, wrong=True)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, self.auth.session(), max_age=COOKIE_MAX_AGE_S, httponly=True,
                            samesite="strict", secure=self.auth.secure)  # fmt: skip
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response


class _Private:
    """Where the dashboard is private, every request but the sign-in page's and the static
    files needs the token: pages go to the sign-in page, the rest is refused."""

    def __init__(self, app: Any, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        open_path = path == "/login" or path.startswith("/static/")
        if scope["type"] != "http" or not self.dashboard.private or open_path:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.dashboard.auth.allows(request):
            await self.app(scope, receive, send)
            return
        if path.startswith("/api/") or path.endswith(".jpg"):
            response: Response = _error(401, "sign in (/login) or send Authorization: Bearer")
        else:
            response = RedirectResponse(f"/login?next={quote(path)}", status_code=303)
        await response(scope, receive, send)


class _SecurityHeaders:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers.extend((k.lower().encode(), v.encode()) for k, v in _HEADERS.items())
            await send(message)

        await self.app(scope, receive, with_headers)


async def _bounded_body(request: Request) -> bytes | None:
    """The request's body, or None past MAX_ACTION_BYTES (read no further than that)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_ACTION_BYTES:
            return None
    return bytes(body)


async def _small_form(request: Request) -> dict[str, str]:
    """The sign-in form's fields (urlencoded, at most MAX_ACTION_BYTES; anything else is an
    empty form): parse_qs needs no multipart parser for two fields."""
    body = await _bounded_body(request)
    if body is None:
        return {}
    fields = parse_qs(body.decode(errors="replace"), max_num_fields=8)
    return {name: values[0] for name, values in fields.items()}


def _remote(request: Request) -> str:
    return request.client.host if request.client else "?"


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _local(target: str | None) -> str:
    """A path on this server to return to after signing in; anything else goes home."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return quote(target, safe="/?=&-_.")
