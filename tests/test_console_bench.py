"""``appliance bench console``'s measuring parts, without a device (the bench itself runs one)."""

from __future__ import annotations

import gzip
import os

import httpx

from appliance.bench.console import ConsoleBench, cpu_seconds, first_load
from appliance.cli import build_parser

PAGE = (b'<link rel="stylesheet" href="static/console.css"><script src="static/console.js" '
        b'defer></script><script src="static/console.js" defer></script>'
        b'<a href="talk">Talk</a>')


def test_the_first_load_counts_each_linked_file_once_as_compressed_on_the_wire() -> None:
    bodies = {"/": PAGE, "/static/console.css": b"body{}" * 500,
              "/static/console.js": b"let a = 1;\n" * 500}
    asked: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        assert request.headers["Accept-Encoding"] == "gzip"
        return httpx.Response(200, stream=httpx.ByteStream(gzip.compress(
            bodies[request.url.path])), headers={"Content-Encoding": "gzip"})

    with httpx.Client(transport=httpx.MockTransport(serve)) as client:
        files = first_load(client, "http://device")
    assert asked == ["/", "/static/console.css", "/static/console.js"]
    assert [name for name, _ in files] == ["overview (HTML)", "static/console.css",
                                           "static/console.js"]
    sizes = dict(files)
    assert sizes["static/console.css"] == len(gzip.compress(bodies["/static/console.css"]))
    assert sizes["static/console.css"] < len(bodies["/static/console.css"]) / 10


def test_cpu_per_console_and_the_decode_share_against_their_baselines() -> None:
    r = ConsoleBench(first_load=(("overview (HTML)", 4000), ("static/x.js", 1000)),
                     consoles=3, window_s=30.0, idle_cpu_s=0.5, live_cpu_s=0.8, events=30,
                     rates_alone=(40.0, 50.0, 60.0), rates_watched=(39.2, 60.0, 30.0),
                     max_tokens=64)
    assert r.first_load_bytes == 5000
    assert abs(r.cpu_per_console_min_s - 0.2) < 1e-9  # 0.3 s more over 30 s, 3 consoles
    assert abs(r.idle_cpu_min_s - 1.0) < 1e-9
    assert abs(r.rate_share - 0.98) < 1e-9  # the median of 0.98, 1.2 and 0.5: pair by pair
    quieter = ConsoleBench(r.first_load, 3, 30.0, 0.8, 0.5, 0, (50.0,), (50.0,), 64)
    assert quieter.cpu_per_console_min_s == 0.0  # noise below the baseline is not negative


def test_cpu_seconds_counts_this_process_s_work() -> None:
    before = cpu_seconds(os.getpid())
    total = 0
    while cpu_seconds(os.getpid()) - before < 0.05:  # bounded: it is this very loop's time
        total += sum(range(10_000))
    assert total > 0


def test_the_bench_is_registered() -> None:
    args = build_parser().parse_args(["bench", "console", "--consoles", "2", "--window", "5"])
    assert (args.consoles, args.window, args.rounds) == (2, 5.0, 4)
