"""The fleet dashboard that ``cloud-trainer serve`` starts where ``[dashboard] port`` is set.

Data flows one way: each session writes what it did (``records``: accuracy probes, updates,
acks, the latest frame) and the daemon hands those, its sessions' figures and every device's
status and telemetry to ``FleetState``; the web app (``app``, Starlette on uvicorn, ``server``)
only reads that state and queues operator actions back to the daemon (``actions``), which runs
them on its worker like any other session work.
"""
