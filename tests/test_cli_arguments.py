"""The commands' shared argument types, in milliseconds: a bad count is a usage error."""

from __future__ import annotations

import pytest

from appliance.cli import build_parser

BENCHES_WITH_ROUNDS = ("actions", "adapters", "api", "bridge", "console", "contention",
                       "conversation", "escalation", "knowledge", "llm", "parallel", "peers",
                       "thermal", "voice")


@pytest.mark.parametrize("bench", BENCHES_WITH_ROUNDS)
@pytest.mark.parametrize("rounds", ["0", "-3", "two"])
def test_rounds_must_be_a_positive_whole_number(bench: str, rounds: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["bench", bench, "--rounds", rounds])
    assert exited.value.code == 2
    assert f"--rounds: expected a positive whole number, got '{rounds}'" in capsys.readouterr().err
    assert build_parser().parse_args(["bench", bench, "--rounds", "2"]).rounds == 2


def test_a_search_asks_for_at_least_one_passage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["knowledge", "search", "frost", "--k", "0"])
    assert "--k: expected a positive whole number, got '0'" in capsys.readouterr().err
