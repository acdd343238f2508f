"""The inbox: the one way into the service for the entrances, built before what it feeds.

The MQTT bridge, the GPIO inputs and voice put what arrives into it, from any
thread; the intake (:meth:`~appliance.service.intake.Intake.run`) takes it
out on the loop, in order. Built first, it breaks the wiring's cycle: the
bridge hands messages to the intake, and the intake answers through the bridge.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from appliance.mqtt.inbound import Inbound
from appliance.protocol.messages import Request


@dataclass(frozen=True)
class Connected:
    """The broker connection is (back) up: republish what a restarted broker forgot."""


@dataclass(frozen=True)
class Reading:
    """A reading of this device's own sensor (a GPIO input)."""

    name: str
    event: dict[str, Any]


@dataclass(frozen=True)
class Spoken:
    """A question heard by voice."""

    request: Request


@dataclass(frozen=True)
class CancelRunning:
    """Barge-in: stop the running generation."""


@dataclass(frozen=True)
class Prefill:
    """A question still being spoken, for an idle model to read ahead."""

    text: str


Item = Inbound | Connected | Reading | Spoken | CancelRunning | Prefill


class Inbox:
    """A thread-safe queue of :data:`Item`, and the topics the bridge subscribes to."""

    def __init__(self, loop: asyncio.AbstractEventLoop, subscriptions: list[str]) -> None:
        self.loop = loop
        self.subscriptions = subscriptions
        self._items: asyncio.Queue[Item] = asyncio.Queue()

    def put(self, item: Item) -> None:
        """Queue ``item`` (from any thread)."""
        self.loop.call_soon_threadsafe(self._items.put_nowait, item)

    def message(self, inbound: Inbound) -> None:
        """The bridge received ``inbound``."""
        self.put(inbound)

    def connected(self) -> None:
        """The bridge (re)connected."""
        self.put(Connected())

    def reading(self, name: str, event: dict[str, Any]) -> None:
        """A GPIO input changed (on gpiozero's thread)."""
        self.put(Reading(name, event))

    def ask(self, request: Request) -> None:
        """Voice heard a question."""
        self.put(Spoken(request))

    def cancel_running(self) -> None:
        """Voice was interrupted (barge-in)."""
        self.put(CancelRunning())

    def prefill(self, text: str) -> None:
        """Voice is still hearing ``text``."""
        self.put(Prefill(text))

    async def get(self) -> Item:
        """The next item, in the order they came."""
        return await self._items.get()
