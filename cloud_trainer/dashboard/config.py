"""``[dashboard]``: where the fleet dashboard listens, who may act on devices, what it keeps."""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared_schema.config_files import write_private

DASHBOARD_PORT = 8470  # the demo's and a provisioned trainer's dashboard (by default: off)
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]  # what a browser calls this machine


class DashboardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(0, ge=0, le=65535)  # 0: no dashboard (and no accuracy probes)
    host: str = "127.0.0.1"
    # The names browsers reach it by besides host (a DNS name in its certificate, say): a
    # request for any other Host is refused, so no web page can rebind a name of its own to it.
    server_names: list[str] = Field(default_factory=list, max_length=32)
    # A file holding the operator's token (16 characters or more): whoever gives it may pause,
    # roll back and re-bound devices. Unset: the dashboard is read-only.
    token_file: Path | None = None
    # HTTPS; required on any address but loopback unless allow_plaintext says otherwise.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_plaintext: bool = False  # development only: the token crosses the network in clear
    # Frames of each uploaded segment scored with the device's model and the pretrained one
    # (two student inferences each, on the trainer's worker).
    probe_frames: int = Field(2, ge=1, le=16)
    history: int = Field(720, ge=10, le=100_000)  # probes and updates kept per device

    @property
    def enabled(self) -> bool:
        return self.port != 0

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def private(self) -> bool:
        """Off loopback every page needs the token too: it shows what the cameras see."""
        return not _loopback(self.host)

    @property
    def allowed_hosts(self) -> list[str]:
        loopback = [] if self.private else LOOPBACK_NAMES
        return [self.host, *self.server_names, *loopback]

    @model_validator(mode="after")
    def _secured_off_loopback(self) -> DashboardConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both, or neither")
        if not self.enabled or not self.private:
            return self
        if not self.tls and not self.allow_plaintext:
            raise ValueError(
                f"host {self.host} is not loopback: set tls_cert and tls_key (or allow_plaintext"
                " = true for development only)"
            )
        if self.token_file is None:
            raise ValueError(f"host {self.host} is not loopback: set token_file (pages need it)")
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token_file(path: Path) -> Path:
    """A new operator token in ``path``, readable by its owner only from the start."""
    write_private(path, (secrets.token_hex(16) + "\n").encode())
    return path
