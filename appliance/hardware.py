"""Facts about the machine we run on, read from ``/proc`` and ``/sys``."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import MutableMapping
from pathlib import Path

from appliance.errors import ApplianceError


def physical_cores(sys_cpu: Path = Path("/sys/devices/system/cpu")) -> int:
    """Number of physical cores (SMT siblings counted once); falls back to the logical count."""
    cores: set[tuple[str, str]] = set()
    for topo in sys_cpu.glob("cpu[0-9]*/topology"):
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            continue
        cores.add((package, core))
    return len(cores) or os.cpu_count() or 1


def parallel_sequences(configured: int | None,
                       sys_cpu: Path = Path("/sys/devices/system/cpu")) -> int:
    """Requests decoded together: ``llm.parallel`` as configured, or the board's default.

    The default is 2 where there are 4 or more cores (a Pi 5): decoding a 3B model is bound
    by memory bandwidth there, so a second sequence costs little. With fewer cores a step
    is bound by compute, and one sequence at a time is as fast.
    """
    return configured or (2 if physical_cores(sys_cpu) >= 4 else 1)


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``MemAvailable`` from ``/proc/meminfo``, in bytes."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError) as exc:
        raise ApplianceError(f"{meminfo}: cannot read MemAvailable: {exc}") from exc
    raise ApplianceError(f"{meminfo}: has no MemAvailable line")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (``VmRSS``), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def load_average() -> float:
    """The one-minute load average."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


OPENMP_SPINCOUNT = "1000"
"""How long an OpenMP thread spins at a barrier before it sleeps (libgomp's default: 300,000).

Measured with 2 decode threads on 2 cores (decode tok/s, idle / with two busy
processes): SmolLM2 Q4_1 93-88 / 24-26 by default, 98-98 / 35-24 at 1000;
Gemma 3 Q4_K_M 48-48 / 9-13 by default, 47-50 / 24-22 at 1000. Lower counts
(100) and ``OMP_WAIT_POLICY=PASSIVE`` lose a third or more when idle.
"""


def calm_openmp(env: MutableMapping[str, str]) -> None:
    """Let llama.cpp's threads sleep soon at ggml's barriers, unless ``env`` says otherwise.

    A spinning thread burns the time slice of the one it waits for, so on a CPU
    shared with speech, a broker or another model, decoding collapses (a quarter
    of its speed here). Set before libgomp loads: in the environment of the model
    worker and of the CLI, and in systemd/appliance.service.
    """
    env.setdefault("GOMP_SPINCOUNT", OPENMP_SPINCOUNT)


M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter for the number of malloc arenas."""
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter: allocations this large are mapped, and unmapped when freed."""


def return_large_buffers(threshold: int = 1 << 20) -> None:
    """Let every buffer of ``threshold`` bytes or more go back to the system when it is freed.

    glibc maps large allocations, but raises that threshold each time one is
    freed; the model worker's KV snapshots and batches (megabytes, of every size)
    then come from the heap, and resident memory keeps their high-water mark. A
    fixed threshold keeps the worker's memory what it holds now. A no-op where
    the C library is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)


def cap_malloc_arenas(arenas: int = 2) -> None:
    """Let glibc keep at most ``arenas`` malloc arenas in this process.

    By default every thread that allocates may get an arena of its own (up to
    eight per core), and resident memory keeps each arena's high-water mark: the
    threads that parse requests off the loop then grow a long-running service
    step by step, without a leak. Two arenas keep that growth to one. A no-op
    where the C library is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
