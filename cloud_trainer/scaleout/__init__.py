"""The trainer on a Ray cluster (``cloud-trainer serve --ray ADDRESS``).

Each device's session runs in a Ray actor of its own (``actor.py``), named after the device so
that any front can reach it, restarted from its checkpoint by Ray if its worker dies. The MQTT
front ends (``front.py``) share one subscription (MQTT 5 ``$share``): the broker hands each
uplink message to one of them, which checks it and forwards it to the device's actor; the actor
publishes what the session sends down itself. Sessions run the same code as in the single
process (``cloud_trainer.host``).
"""
