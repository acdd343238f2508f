"""What the bridge hands on for each received message: :class:`Inbound`."""

from __future__ import annotations

from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Inbound:
    """A received message, with the MQTT v5 properties we use."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    response_topic: str | None
    correlation: bytes | None
    client: str
    hops: int = 0

    @classmethod
    def from_paho(cls, msg: paho.MQTTMessage) -> Inbound:
        """``msg`` as paho delivered it.

        Raises ``UnicodeDecodeError``, ``ValueError`` or ``TypeError`` for a
        message it cannot read (a topic that is not UTF-8, for one).
        """
        props = getattr(msg, "properties", None)
        return cls(msg.topic, msg.payload, msg.qos, msg.mid,
                   getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None),
                   *_user_properties(props))


def _user_properties(props: Properties | None) -> tuple[str, int]:
    """The ``client`` (or ``client_id``) and ``hops`` user properties.

    The client names the asker for rate limiting; hops count how often a fleet
    ask has been handed on.
    """
    client, hops = "", 0
    for key, value in getattr(props, "UserProperty", None) or ():
        if key in ("client", "client_id"):
            client = str(value)[:64]
        elif key == "hops" and str(value).isdigit():
            hops = min(int(value), 99)
    return client, hops
