"""``appliance bench soak``: mixed traffic; memory, descriptors and threads each minute."""

from __future__ import annotations

import argparse

from appliance.cli.benches import add_private_service_arguments, private_service_models


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench soak``."""
    soak = cmds.add_parser("soak", help="mixed MQTT, HTTP and Wyoming traffic with actions, "
                                        "cancels and escalation; growth per minute")
    soak.add_argument("--minutes", type=float, default=15.0, help="how long (default 15)")
    add_private_service_arguments(soak)
    soak.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Soak a private ``appliance run``; exit 1 on steady growth, failures or a death."""
    from appliance.bench.soak import Sample, run_soak

    model, speech = private_service_models(args)
    print(f"{'minute':>6}  {'RSS app':>8} {'worker':>8} MiB  {'fds app':>7} {'worker':>6}  "
          f"{'threads app':>11} {'worker':>6}  {'answered':>8} {'failed':>6}", flush=True)

    def row(s: Sample) -> None:
        print(f"{s.minute:6.1f}  {s.rss_mib[0]:8.1f} {s.rss_mib[1]:8.1f}      "
              f"{s.fds[0]:7d} {s.fds[1]:6d}  {s.threads[0]:11d} {s.threads[1]:6d}  "
              f"{s.answered:8d} {s.failed:6d}", flush=True)

    r = run_soak(model, speech, args.minutes, row)
    g = r.growth
    print(f"growth per minute after the first (app + worker): RSS {g['rss_mib']:+.2f} MiB, "
          f"descriptors {g['fds']:+.2f}, threads {g['threads']:+.2f}")
    print(f"requests: {r.answered} answered, {r.failed} failed")
    print("verdict: " + (f"STEADY GROWTH in {', '.join(r.steady)}" if r.steady
                         else "no steady growth" if r.judged
                         else "too short to judge growth (5 minutes at least)")
          + ("" if r.alive else "; the service DIED"))
    for failure in r.failures[:5]:
        print(f"failed: {failure}")
    return 0 if r.alive and not r.steady and not r.failures else 1
