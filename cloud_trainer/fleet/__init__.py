"""Broker security for a fleet, generated rather than described: a CA, the broker's
certificate, a credential per device and per service, an ACL derived from the topic tree, a
mosquitto.conf, and a device profile and trainer config that use them (``cloud-trainer fleet
provision``)."""

from cloud_trainer.fleet.provision import Fleet, FleetError, provision

__all__ = ["Fleet", "FleetError", "provision"]
