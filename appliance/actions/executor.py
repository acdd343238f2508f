"""The executor: what a verified action does: one MQTT message, or one GPIO output.

An MQTT action goes through the outbox (QoS 1, journaled in the same write
that makes it due), so it is sent once even if the appliance is killed before
the broker has it, and never again once the broker acknowledged it. Payload
templates insert argument and world values as data: a string that is one
placeholder (``"{args.minutes}"``) becomes the value itself, with its type;
placeholders inside longer text are filled as rule prompts are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from appliance.config.schema import Action
from appliance.errors import ApplianceError
from appliance.protocol.messages import Outgoing
from appliance.rules.template import parse_template

_WHOLE = re.compile(r"^\{([^{}]+)\}$")

Deliver = Callable[[str | None, list[Outgoing]], None]
SetOutput = Callable[[str, bool], None]


class ExecutionError(ApplianceError):
    """The action could not be carried out; the message says why."""


def render_payload(template: Any, values: Mapping[str, Any]) -> Any:
    """``template`` with its placeholders filled from ``values`` (``args`` and readings)."""
    if isinstance(template, dict):
        return {key: render_payload(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [render_payload(value, values) for value in template]
    if isinstance(template, str):
        whole = _WHOLE.match(template)
        if whole is not None:
            parsed = parse_template(template)
            found = parsed.fields[0].lookup(values)
            return found if isinstance(found, bool | int | float | str) else None
        return parse_template(template).render(values) if "{" in template else template
    return template


class Executor:
    """Carries out verified actions through ``deliver`` (the outbox) or ``set_output`` (GPIO)."""

    def __init__(self, deliver: Deliver, set_output: SetOutput | None) -> None:
        self.deliver, self.set_output = deliver, set_output

    def run(self, action: Action, args: Mapping[str, Any],
            world: Mapping[str, Any]) -> None:
        """Do ``action``; raises :class:`ExecutionError` when it cannot be done."""
        if action.publish is not None:
            payload = render_payload(action.publish.payload, {**world, "args": args})
            body = payload.encode() if isinstance(payload, str) else json.dumps(
                payload, ensure_ascii=False).encode()
            try:
                self.deliver(None, [Outgoing(action.publish.topic, body,
                                             retain=action.publish.retain)])
            except (ApplianceError, OSError, ValueError) as exc:
                raise ExecutionError(f"cannot publish on {action.publish.topic}: {exc}") from None
        elif action.gpio is not None:
            if self.set_output is None:
                raise ExecutionError("GPIO is off or unavailable on this device")
            from gpiozero import GPIOZeroError  # loaded already: the outputs are gpiozero's

            try:
                self.set_output(action.gpio.output, action.gpio.value)
            except (GPIOZeroError, KeyError, ValueError) as exc:
                raise ExecutionError(f"GPIO output {action.gpio.output!r}: {exc}") from None
