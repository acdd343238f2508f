"""``appliance bench``: performance figures as ratios against baselines measured in the same run.

Each benchmark's arguments and report live in :mod:`appliance.cli.benches`;
the measuring itself is in :mod:`appliance.bench`, imported only when it runs.
"""

from __future__ import annotations

import argparse

from appliance.cli.benches import (
    actions,
    adapters,
    api,
    bridge,
    console,
    contention,
    conversation,
    escalation,
    fuzz,
    knowledge,
    llm,
    parallel,
    peers,
    soak,
    thermal,
    voice,
)

_BENCHES = (llm, bridge, thermal, voice, escalation, knowledge, actions, api, fuzz, soak,
            adapters, conversation, console, peers, contention, parallel)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench`` command group."""
    p = sub.add_parser("bench", help="measure performance against raw baselines")
    cmds = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    for bench in _BENCHES:
        bench.register(cmds)
