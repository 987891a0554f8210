"""The trainer on a Ray cluster (``cloud-trainer serve --ray ADDRESS``).

Each device's session runs in a Ray actor of its own (``actor.py``), named after the device so
that any front can reach it, restarted from its checkpoint by Ray if its worker dies. The MQTT
fronts (``front.py``, one per ``serve --ray`` process, each with its own login) share one
subscription (MQTT 5 ``$share``): the broker hands each uplink message to one of them, which
checks it and forwards it to the device's session actor. What a session sends down, its actor
frames and numbers itself and publishes through a front's connection. Sessions run the same
code as in the single process (``cloud_trainer.host``).
"""
