"""``appliance act NAME`` and ``appliance world``: a running appliance's actions and readings.

Both talk to the appliance through its broker, as any other client does:
``act`` publishes on ``<base>/cmd/act`` and prints the record the verifier
publishes on ``<base>/action``; ``world`` reads the retained ``<base>/world``.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import time
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.config import Settings
from appliance.config.convert import positive_number
from appliance.config.secrets import read_password
from appliance.errors import ApplianceError, UsageError

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from appliance.mqtt.contract import Topics

WAIT_S = 10.0
"""How long the broker and the appliance each get to answer, unless ``--wait`` says."""
T = TypeVar("T")


def _seconds(text: str) -> float:
    """``--wait``'s value: a positive, finite number of seconds."""
    value = positive_number(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


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
    for command in (act, world):
        command.add_argument("--wait", type=_seconds, default=WAIT_S, metavar="SECONDS",
                             help="how long the broker and the appliance each get to answer "
                                  f"(default {WAIT_S:g})")


def _client(settings: Settings, topics: list[str], wait_s: float,
            ) -> tuple[paho.Client, queue.Queue[Any]]:
    """A client subscribed to ``topics`` (messages arrive on the queue), or one line why not.

    A broker that does not answer CONNECT or SUBSCRIBE within ``wait_s``, or
    refuses either (credentials, an ACL), is an :class:`ApplianceError`.
    """
    import paho.mqtt.client as paho  # only these commands need it: the CLI starts faster
    from paho.mqtt.enums import CallbackAPIVersion

    mqtt = settings.mqtt
    where = f"the broker at {mqtt.host}:{mqtt.port}"
    inbox: queue.Queue[Any] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                         client_id=f"appliance-cli-{uuid.uuid4().hex[:12]}")
    if mqtt.username is not None:
        client.username_pw_set(mqtt.username, read_password(settings))
    if mqtt.tls is not None:
        client.tls_set(ca_certs=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None,
                       certfile=str(mqtt.tls.cert_file) if mqtt.tls.cert_file else None,
                       keyfile=str(mqtt.tls.key_file) if mqtt.tls.key_file else None)
    connacks: queue.Queue[Any] = queue.Queue()
    subacks: queue.Queue[list[Any]] = queue.Queue()
    client.on_message = lambda _c, _u, m: inbox.put(m)
    client.on_connect = lambda _c, _u, _f, reason, _p: connacks.put(reason)
    client.on_subscribe = lambda _c, _u, _mid, reasons, _p: subacks.put(reasons)
    try:
        client.connect(mqtt.host, mqtt.port, keepalive=30)
    except OSError as exc:
        raise ApplianceError(f"cannot reach {where}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        reason = _broker_reply(connacks, wait_s, f"no CONNACK from {where} within {wait_s:g} s")
        if reason.is_failure:
            raise ApplianceError(f"{where} refused the connection: {reason}")
        client.subscribe([(topic, 1) for topic in topics])
        reasons = _broker_reply(subacks, wait_s, f"no SUBACK from {where} within {wait_s:g} s "
                                   f"for {', '.join(topics)}")
        refused = [f"{topic} ({code})" for topic, code in zip(topics, reasons, strict=False)
                   if code.is_failure]
        if refused:
            raise ApplianceError(f"{where} refused the subscription to {', '.join(refused)}")
    except BaseException:
        _close(client)
        raise
    return client, inbox


def _broker_reply(replies: queue.Queue[T], wait_s: float, missing: str) -> T:
    """The broker's next answer, or :class:`ApplianceError` ``missing`` after ``wait_s``."""
    try:
        return replies.get(timeout=wait_s)
    except queue.Empty:
        raise ApplianceError(missing) from None


def _close(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _json_object(payload: bytes) -> dict[str, Any] | None:
    """``payload`` as a JSON object, or ``None`` when it is not one."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


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
    client, inbox = _client(settings, [topics.action, topics.error], args.wait)
    try:
        client.publish(topics.act, json.dumps({"id": request_id, "name": args.name,
                                               "args": action_args}), qos=1)
        body = _record(inbox, topics, request_id, args.wait)
    finally:
        _close(client)
    if args.json:
        print(json.dumps(body, ensure_ascii=False))
    else:
        needs = body.get("needs")
        wanted = (f"; needs {', '.join(map(str, needs))}"
                  if isinstance(needs, list) and needs else "")
        reason = f": {body['reason']}" if body.get("reason") else ""
        print(f"{body['action']}: {body['verdict']}{reason}{wanted}")
    return 0 if body["verdict"] in ("done", "awaiting_confirmation") else 1


def _record(inbox: queue.Queue[Any], topics: Topics, request_id: str,
            wait_s: float) -> dict[str, Any]:
    """The verifier's record for ``request_id``; its error, or silence, as one line.

    Other clients' records and errors share these topics: a message that is not
    a JSON object with our id is someone else's and is skipped (and counted, so
    that a silence can say what else came).
    """
    deadline = time.monotonic() + wait_s
    skipped: dict[str, int] = {}
    while True:
        try:
            message = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            others = "".join(f"; skipped {n} unreadable message(s) on {topic}"
                             for topic, n in skipped.items())
            raise ApplianceError(f"no answer from the appliance on {topics.base} within "
                                 f"{wait_s:g} s; is it running?{others}") from None
        body = _json_object(message.payload)
        if body is None:
            skipped[message.topic] = skipped.get(message.topic, 0) + 1
            continue
        if body.get("id") != request_id:
            continue
        if message.topic == topics.error:
            error = body.get("error")
            raise ApplianceError(f"act: {error}" if isinstance(error, str) and error else
                                 f"act: the error on {topics.error} for this request has no "
                                 "'error' text")
        if not (isinstance(body.get("action"), str) and isinstance(body.get("verdict"), str)):
            raise ApplianceError(f"act: the record on {topics.action} for this request has no "
                                 "'action' and 'verdict' strings")
        return body


def run_world(args: argparse.Namespace) -> int:
    """Print the retained readings with their age."""
    from appliance.cli import load
    from appliance.mqtt.contract import Topics

    settings = load(args)
    topics = Topics.under(settings.base_topic)
    client, inbox = _client(settings, [topics.world], args.wait)
    try:
        message = inbox.get(timeout=args.wait)
    except queue.Empty:
        raise ApplianceError(f"no readings published on {topics.world} yet") from None
    finally:
        _close(client)
    readings = _readings(message.payload, topics.world)
    if args.json:
        print(json.dumps(readings, ensure_ascii=False))
        return 0
    for name, reading in readings.items():
        age = time.time() - reading["at"]
        fields = json.dumps(reading["fields"], ensure_ascii=False)
        print(f"{name:<20} {age:8.0f} s ago  {fields}")
    return 0


def _readings(payload: bytes, topic: str) -> dict[str, Any]:
    """The retained snapshot (``{name: {"fields": {...}, "at": unix time}}``), checked.

    Anyone may publish retained on ``topic``: what is not the snapshot's shape is
    an :class:`ApplianceError` naming the first thing wrong.
    """
    readings = _json_object(payload)
    if readings is None:
        raise ApplianceError(f"world: {topic} holds no JSON object ({len(payload)} bytes)")
    for name, reading in readings.items():
        if not isinstance(reading, dict):
            raise ApplianceError(f"world: {topic}: {name!r} is not an object")
        at, fields = reading.get("at"), reading.get("fields")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise ApplianceError(f"world: {topic}: {name!r} has no 'at' time")
        if not isinstance(fields, dict):
            raise ApplianceError(f"world: {topic}: {name!r} has no 'fields' object")
    return readings
