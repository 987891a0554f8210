"""A protocol peer in its own process, so tests can SIGKILL it like a power cut.

python -m tests.peers.mqtt_peer device DEVICE_ID MQTT_JSON
    connects as a device, prints "ready", idles.
python -m tests.peers.mqtt_peer stuck-trainer CLIENT_ID MQTT_JSON
    connects as the trainer, prints "got <seq>" for the first segment and then hangs inside
    the handler, so the segment is never acknowledged.
MQTT_JSON is the client's BrokerConfig (its login included), as JSON.
"""

from __future__ import annotations

import sys
import threading

from shared_schema.endpoint import DeviceEndpoint, TrainerEndpoint
from shared_schema.messages import MessageType
from shared_schema.mqtt import BrokerConfig


def main(role: str, name: str, mqtt_json: str) -> None:
    config = BrokerConfig.model_validate_json(mqtt_json)
    if role == "device":
        endpoint = DeviceEndpoint(config, name)
    else:
        endpoint = TrainerEndpoint(config)

        def hang(env, topic):
            print(f"got {env.header.seq}", flush=True)
            threading.Event().wait()

        endpoint.on(MessageType.SEGMENT, hang)
    endpoint.start()
    if not endpoint.wait_connected(10):
        sys.exit("could not connect")
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(*sys.argv[1:4])
