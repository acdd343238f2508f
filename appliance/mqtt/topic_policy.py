"""Where the appliance may publish on someone's say-so: response topics and configured topics.

An asker names a Response Topic, a rule or an action names a publish topic.
None of them may turn the appliance into a relay into places it speaks for:
Home Assistant's discovery, its own ``<base>`` (status, state, answers), the
namespace of the other devices, or the broker's ``$`` topics. A site can
narrow this further with ``mqtt.response_topics``, a list of topic filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_TOPIC_BYTES = 256


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT filter ``topic_filter`` (``+`` and ``#`` wildcards)."""
    parts, levels = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)


def _within(topic: str, prefix: str) -> bool:
    return topic == prefix or topic.startswith(prefix + "/")


@dataclass(frozen=True)
class TopicPolicy:
    """The publish topics the appliance accepts from askers and from its config.

    ``base``: our own base topic (``<base>/reply/...`` stays open for replies);
    ``namespace``: where all devices' bases live (``appliance`` for the
    default ``appliance/{device_id}``), closed too except each one's
    ``reply/...`` area (one appliance escalating to another asks for its
    answer there);
    ``discovery_prefix``: Home Assistant's; ``allow``: optional filters.
    """

    base: str
    namespace: str | None
    discovery_prefix: str
    allow: Sequence[str] = ()

    @classmethod
    def for_settings(cls, base: str, base_template: str, discovery_prefix: str,
                     allow: Sequence[str]) -> TopicPolicy:
        """The policy of a device whose ``mqtt.base_topic`` is ``base_template``."""
        head = base_template.split("{device_id}", 1)[0].rstrip("/")
        namespace = head if "{device_id}" in base_template and head else None
        return cls(base, namespace, discovery_prefix, tuple(allow))

    def refuse_reply(self, topic: str) -> str | None:
        """Why an answer must not go to the asker's Response Topic ``topic``, or ``None``."""
        reason = self.refuse(topic)
        if reason is None and self.allow and not any(
                topic_matches(f, topic) for f in self.allow):
            return f"not in mqtt.response_topics ({', '.join(self.allow)})"
        return reason

    def refuse(self, topic: str) -> str | None:
        """Why the appliance must not publish to ``topic`` (from any source), or ``None``."""
        if not topic:
            return "the topic is empty"
        if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
            return f"the topic is longer than {MAX_TOPIC_BYTES} bytes"
        if "+" in topic or "#" in topic:
            return "a publish topic cannot hold the wildcards '+' or '#'"
        if "\x00" in topic:
            return "the topic holds a NUL character"
        if topic.startswith("$"):
            return "topics starting with '$' belong to the broker"
        if _within(topic, self.discovery_prefix):
            return f"{self.discovery_prefix}/... is Home Assistant's discovery"
        if _within(topic, f"{self.base}/reply"):
            return None
        if _within(topic, self.base):
            return f"{self.base}/... is this device's own (use {self.base}/reply/...)"
        if self.namespace is not None and _within(topic, self.namespace):
            levels = topic[len(self.namespace) + 1:].split("/")
            if len(levels) >= 3 and levels[1] == "reply":
                return None  # another appliance's reply area: where it asks us to answer
            return f"{self.namespace}/... belongs to the appliances"
        return None
