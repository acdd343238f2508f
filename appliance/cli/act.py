"""``appliance act NAME`` and ``appliance world``: a running appliance's actions and readings.

Both talk to the appliance through its broker, as any other client does:
``act`` publishes on ``<base>/cmd/act`` and prints the record the verifier
publishes on ``<base>/action``; ``world`` reads the retained ``<base>/world``.
"""

from __future__ import annotations

import argparse
import json
import queue
import time
import uuid
from typing import TYPE_CHECKING, Any

from appliance.config import Settings
from appliance.config.secrets import read_password
from appliance.errors import ApplianceError, UsageError

if TYPE_CHECKING:
    import paho.mqtt.client as paho

WAIT_S = 10.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``act`` and ``world`` commands."""
    act = sub.add_parser("act", help="run one action through the verifier of a running "
                                     "appliance, or hear why not")
    act.add_argument("name", help="the action's name (actions[].name)")
    act.add_argument("--args", default="{}", metavar="JSON", help='e.g. \'{"minutes": 5}\'')
    act.add_argument("--json", action="store_true", help="print the record as JSON")
    act.set_defaults(handler=run_act)
    world = sub.add_parser("world", help="the running appliance's sensor readings, with age")
    world.add_argument("--json", action="store_true", help="print the readings as JSON")
    world.set_defaults(handler=run_world)


def _client(settings: Settings, topics: list[str]) -> tuple[paho.Client, queue.Queue[Any]]:
    """A connected client subscribed to ``topics``; messages arrive on the queue."""
    import paho.mqtt.client as paho  # only these commands need it: the CLI starts faster
    from paho.mqtt.enums import CallbackAPIVersion

    mqtt = settings.mqtt
    inbox: queue.Queue[Any] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                         client_id=f"appliance-cli-{uuid.uuid4().hex[:12]}")
    if mqtt.username is not None:
        client.username_pw_set(mqtt.username, read_password(settings))
    if mqtt.tls is not None:
        client.tls_set(ca_certs=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None,
                       certfile=str(mqtt.tls.cert_file) if mqtt.tls.cert_file else None,
                       keyfile=str(mqtt.tls.key_file) if mqtt.tls.key_file else None)
    subscribed: queue.Queue[int] = queue.Queue()
    client.on_message = lambda _c, _u, m: inbox.put(m)
    client.on_subscribe = lambda *_a: subscribed.put(1)
    try:
        client.connect(mqtt.host, mqtt.port, keepalive=30)
    except OSError as exc:
        raise ApplianceError(f"cannot reach the broker at {mqtt.host}:{mqtt.port}: "
                             f"{exc.strerror or exc}") from None
    client.loop_start()
    for topic in topics:
        client.subscribe(topic, qos=1)
        subscribed.get(timeout=WAIT_S)
    return client, inbox


def run_act(args: argparse.Namespace) -> int:
    """Propose the action and print what the verifier decided; exit 0 only when done."""
    from appliance.cli import load

    try:
        action_args = json.loads(args.args)
    except ValueError as exc:
        raise UsageError(f"act: --args is not JSON: {exc}") from None
    if not isinstance(action_args, dict):
        raise UsageError("act: --args must be a JSON object such as '{\"minutes\": 5}'")
    from appliance.mqtt.contract import Topics

    settings = load(args)
    topics = Topics.under(settings.base_topic)
    request_id = f"cli-{uuid.uuid4().hex[:12]}"
    client, inbox = _client(settings, [topics.action, topics.error])
    try:
        client.publish(topics.act, json.dumps({"id": request_id, "name": args.name,
                                               "args": action_args}), qos=1)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                message = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ApplianceError(f"no answer from the appliance on {topics.base} within "
                                     f"{WAIT_S:g} s; is it running?") from None
            body = json.loads(message.payload)
            if body.get("id") != request_id:
                continue
            if message.topic == topics.error:
                raise ApplianceError(f"act: {body['error']}")
            break
    finally:
        client.disconnect()
        client.loop_stop()
    if args.json:
        print(json.dumps(body, ensure_ascii=False))
    else:
        needs = f"; needs {', '.join(body['needs'])}" if body.get("needs") else ""
        reason = f": {body['reason']}" if body.get("reason") else ""
        print(f"{body['action']}: {body['verdict']}{reason}{needs}")
    return 0 if body.get("verdict") in ("done", "awaiting_confirmation") else 1


def run_world(args: argparse.Namespace) -> int:
    """Print the retained readings with their age."""
    from appliance.cli import load
    from appliance.mqtt.contract import Topics

    settings = load(args)
    topics = Topics.under(settings.base_topic)
    client, inbox = _client(settings, [topics.world])
    try:
        message = inbox.get(timeout=WAIT_S)
    except queue.Empty:
        raise ApplianceError(f"no readings published on {topics.world} yet") from None
    finally:
        client.disconnect()
        client.loop_stop()
    readings = json.loads(message.payload)
    if args.json:
        print(json.dumps(readings, ensure_ascii=False))
        return 0
    for name, reading in readings.items():
        age = time.time() - float(reading["at"])
        fields = json.dumps(reading["fields"], ensure_ascii=False)
        print(f"{name:<20} {age:8.0f} s ago  {fields}")
    return 0
