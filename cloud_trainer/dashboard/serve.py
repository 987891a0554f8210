"""The dashboard's server for a daemon: its web stack is imported only where it is on."""

from __future__ import annotations

from cloud_trainer.dashboard.app import Dashboard, Submit
from cloud_trainer.dashboard.auth import Auth
from cloud_trainer.dashboard.config import DashboardConfig
from cloud_trainer.dashboard.server import DashboardServer
from cloud_trainer.dashboard.state import FleetState
from shared_schema.counters import Counters


def server(
    config: DashboardConfig, state: FleetState, submit: Submit, counters: Counters
) -> DashboardServer:
    auth = Auth.from_file(config.token_file, secure=config.tls)
    dashboard = Dashboard(state, auth, submit, counters, hosts=config.allowed_hosts,
                          private=config.private)  # fmt: skip
    return DashboardServer(dashboard, config)
