"""What the console's pages read and act through, handed in by the composition root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.actions.world import WorldState
from appliance.config import Settings
from appliance.service.action_desk import ActionDesk
from appliance.service.journal import Journal
from appliance.service.status import Status

if TYPE_CHECKING:
    from appliance.service.knowledge_context import KnowledgeContext


@dataclass(frozen=True)
class ConsoleParts:
    """The running appliance's parts that the console shows; ``None``: that part is off."""

    settings: Settings
    config_path: Path | None
    status: Status
    journal: Journal
    world: WorldState
    desk: ActionDesk
    knowledge: KnowledgeContext | None
