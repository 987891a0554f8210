"""The dashboard on uvicorn, in a thread of the trainer daemon. The socket is bound before the
thread starts, so a port in use is one line at start-up that names the setting."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading

import uvicorn

from cloud_trainer.dashboard.app import Dashboard
from cloud_trainer.dashboard.config import DashboardConfig
from shared_schema.config_files import ConfigFileError

log = logging.getLogger(__name__)

STOP_S = 5.0  # open live views are cut after this on shutdown
MAX_CONNECTIONS = 256  # open connections (each live view holds one); more are answered 503


class DashboardServer:
    def __init__(self, dashboard: Dashboard, config: DashboardConfig) -> None:
        self.dashboard = dashboard
        self.config = config
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = config.port

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls else "http"
        host = self.config.host
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> None:
        sock = _bind(self.config)
        self.port = sock.getsockname()[1]
        tls = self.config
        settings = uvicorn.Config(
            self.dashboard.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=STOP_S,
            proxy_headers=False,  # the address in the actions log is the peer's, not a header's
            limit_concurrency=MAX_CONNECTIONS,
            ssl_certfile=str(tls.tls_cert) if tls.tls_cert else None,
            ssl_keyfile=str(tls.tls_key) if tls.tls_key else None,
        )
        try:
            settings.load()  # here, not in the thread: a bad certificate is an error at start
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise ConfigFileError(
                f"[dashboard] tls_cert {tls.tls_cert} / tls_key {tls.tls_key}: {exc}: name a PEM"
                " certificate and its key"
            ) from exc
        self._server = uvicorn.Server(settings)
        self._thread = threading.Thread(target=self._run, args=(sock,), name="dashboard",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        who = "actions need the token" if self.dashboard.auth.enabled else "read-only"
        log.info("dashboard on %s (%s)", self.url, who)

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._server.serve(sockets=[sock]))
        except Exception:
            log.exception("dashboard: the web server stopped")
        finally:
            sock.close()

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self.dashboard.stopping.set)
        self._thread.join(STOP_S + 5.0)


def _bind(config: DashboardConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    try:
        sock = socket.create_server((config.host, config.port), family=family, reuse_port=False)
    except OSError as exc:
        raise ConfigFileError(
            f"[dashboard] port {config.port} on {config.host}: {exc.strerror or exc}: pick a"
            " free port, or 0 to turn the dashboard off"
        ) from exc
    sock.set_inheritable(False)
    return sock
