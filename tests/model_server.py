"""A real OpenAI-compatible server for tests: ``python -m llama_cpp.server`` on the SmolLM2 file.

It stands in for llama-server or vLLM on a site's GPU box; the protocol is the same.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from appliance.bench.broker import free_port

ALIAS = "big-test-model"


class ModelServer:
    """The server on a free loopback port; ``endpoint`` is its ``.../v1``."""

    def __init__(self, model: Path, log: Path, api_key: str | None = None) -> None:
        self.model, self.log, self.api_key = model, log, api_key
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        """Start it and wait until it lists its model."""
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
                   "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(self.port),
                   "--n_ctx", "1024", "--n_threads", "1", "--seed", "1"]
        if self.api_key:
            command += ["--api_key", self.api_key]
        self.proc = subprocess.Popen(command, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"{self.endpoint}/models", headers=(
            {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}))
        while True:
            try:
                with urllib.request.urlopen(request, timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server did not start: "
                                       f"{self.log.read_text()[-500:]}") from None
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL it, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
