"""A fleet's trust, generated rather than described: the trainer's signing keys (``keys``:
``cloud-trainer keys``) and the broker's security (``provision``: ``cloud-trainer fleet
provision``): a CA, the broker's certificate, a login per device and per service, an ACL derived
from the topic tree, a mosquitto.conf, and the device profiles and trainer config that use them."""

from cloud_trainer.fleet.provision import Fleet, FleetError, provision

__all__ = ["Fleet", "FleetError", "provision"]
