"""``appliance bench fuzz``: hostile input over MQTT, HTTP and Wyoming, one error for each."""

from __future__ import annotations

import argparse

from appliance.cli.benches import add_private_service_arguments, private_service_models

RSS_TARGET_MIB = 30


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench fuzz``."""
    fuzz = cmds.add_parser("fuzz", help="hostile input over MQTT, HTTP and Wyoming: one error "
                                        "for each, valid requests answered, memory bounded")
    fuzz.add_argument("--count", type=int, default=10000,
                      help="hostile cases in all (a third MQTT, the rest HTTP and Wyoming)")
    fuzz.add_argument("--seed", type=int, default=7, help="seed of the generated cases")
    fuzz.add_argument("--concurrency", type=int, default=8, help="connections at a time")
    add_private_service_arguments(fuzz)
    fuzz.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Start a private ``appliance run`` and fuzz it; exit 1 when a contract is broken."""
    from appliance.bench.fuzz_bench import run_fuzz_bench

    model, speech = private_service_models(args)
    r = run_fuzz_bench(model, speech, args.count, seed=args.seed,
                       concurrency=args.concurrency)
    m, s = r.mqtt, r.servers
    print(f"{'category':<44}{'sent':>6}{'right':>7}{'wrong':>7}  first reason")
    print(f"{'mqtt: all':<44}{m.sent:>6}{min(m.errors, m.sent):>7}"
          f"{abs(m.sent - m.errors) + len(m.unexpected):>7}  "
          f"{m.unexpected[0] if m.unexpected else ''}")
    for kind, t in sorted(s.tallies.items()):
        note = f"({t.skipped} not sent) {t.failures[0]}" if t.failures else ""
        print(f"{kind:<44}{t.sent:>6}{t.passed:>7}{t.failed:>7}  {note[:120]}")
    print(f"hostile  {m.sent + s.sent} cases, {min(m.errors, m.sent) + s.passed} got their "
          f"one error")
    print(f"valid    MQTT {m.valid_answered}/{m.valid_asked}, HTTP and Wyoming "
          f"{s.valid_answered}/{s.valid_asked} answered"
          + (f"; first failure: {s.valid_failures[0]}" if s.valid_failures else ""))
    print(f"memory   app + worker RSS {r.mqtt_rss_growth / (1 << 20):+.1f} MiB (MQTT), "
          f"{s.rss_growth / (1 << 20):+.1f} MiB (HTTP, Wyoming)  (target < {RSS_TARGET_MIB} "
          "MiB each)")
    print(f"time     {r.seconds:.0f} s in all, {s.seconds:.0f} s for HTTP and Wyoming; "
          f"the service is {'alive' if r.alive else 'DEAD'}"
          + (f"; stopped early: {s.aborted}" if s.aborted else ""))
    right = (m.errors == m.sent and not m.unexpected and m.valid_answered == m.valid_asked
             and not s.failing() and s.valid_answered == s.valid_asked and r.alive
             and not s.aborted
             and max(r.mqtt_rss_growth, s.rss_growth) < RSS_TARGET_MIB << 20)
    return 0 if right else 1
