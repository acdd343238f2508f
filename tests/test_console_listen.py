"""Until a password is set, the console listens on loopback only; once one is, on the network."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bench.broker import free_port
from tests.console_rig import network_address
from tests.helpers import eventually, run_cli
from tests.services import ApplianceProcess


def accepts(address: str, port: int) -> bool:
    """Whether something accepts TCP connections there."""
    try:
        socket.create_connection((address, port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_the_console_moves_from_loopback_to_the_network_once_a_password_is_set(
        start: Callable[..., ApplianceProcess], tmp_path: Path) -> None:
    lan, port = network_address(), free_port()
    app = start({"api": {"web": {"listen": f"0.0.0.0:{port}"}}})
    assert accepts("127.0.0.1", port)
    assert not accepts(lan, port)  # no password yet: the network cannot even connect
    done = run_cli("--config", str(app.config), "console", "password", "--stdin",
                   stdin="a long enough password\n")
    assert done.returncode == 0, done.stderr
    eventually(lambda: accepts(lan, port), 15, "the console listening on the network")
    assert accepts("127.0.0.1", port)
    assert app.proc is not None and app.proc.poll() is None
