"""The model library's boundaries: who loads llama_cpp, and who touches its private parts."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import appliance
from appliance.llm import native
from tests.helpers import write_config

PACKAGE = Path(appliance.__file__).parent
NATIVE = PACKAGE / "llm" / "native.py"

_SERVICE_START = """
import sys
from appliance.cli import build_parser, load
from appliance.preflight import preflight
import appliance.cli.run
import appliance.service.supervisor

args = build_parser().parse_args(["--config", sys.argv[1], "run"])
settings = load(args, service=True)
preflight(settings)
if settings.api.http is not None:
    import appliance.api  # the HTTP APIs' routes, with their schema checks
heavy = sorted(name for name in ("llama_cpp", "onnxruntime", "numpy", "vosk", "zeroconf")
               if name in sys.modules)
print(",".join(heavy))
"""


@pytest.mark.parametrize("api", [None, {"http": {"listen": "127.0.0.1:9"}}],
                         ids=["no APIs", "HTTP APIs"])
def test_cli_and_supervisor_start_without_llama_cpp(tmp_path: Path,
                                                    api: dict[str, Any] | None) -> None:
    """``appliance run`` up to the worker's start: the CLI, the start-up checks, the supervisor.

    A fresh interpreter, so that nothing this test process imported counts;
    knowledge and voice are off (the defaults), so the embedding model's runtime, numpy
    and vosk stay out too. With the HTTP APIs on, their JSON-schema checks use
    llama-cpp-python's converter without loading llama.cpp, and the Wyoming
    server's speech (vosk) and zeroconf load only with ``api.wyoming``.
    """
    config = write_config(tmp_path / "config.yaml",
                          {"mqtt": {"port": 9}, **({"api": api} if api else {})})
    done = subprocess.run([sys.executable, "-c", _SERVICE_START, str(config)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"loaded before any model runs: {done.stdout.strip()}"


def test_engine_is_still_importable_from_the_package() -> None:
    from appliance import llm
    from appliance.llm.engine import Engine

    assert llm.Engine is Engine
    assert "Engine" in llm.__all__


def _private_names() -> set[str]:
    """Private attributes and methods of the llama_cpp classes we hold (read from its source)."""
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    names: set[str] = set()
    for file, classes in (("llama.py", None), ("_internals.py", None),
                          ("llama_grammar.py", {"LlamaGrammar"})):
        tree = ast.parse((root / file).read_text(encoding="utf-8"))
        for cls in tree.body:
            if not isinstance(cls, ast.ClassDef) or (classes and cls.name not in classes):
                continue
            for node in ast.walk(cls):
                if isinstance(node, ast.FunctionDef):
                    names.add(node.name)
                elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                      and node.value.id == "self"):
                    names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _private_uses(tree: ast.Module, names: set[str]) -> Iterator[tuple[int, str]]:
    """Where ``tree`` reaches into llama-cpp-python's private parts.

    Its objects' private attributes, its private modules, and writes to
    ``n_tokens`` (the KV cache's bookkeeping).
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not _is_self(node.value):
            module_private = (isinstance(node.value, ast.Name) and node.value.id == "llama_cpp"
                              and node.attr.startswith("_") and not node.attr.startswith("__"))
            n_tokens_write = node.attr == "n_tokens" and isinstance(node.ctx, ast.Store)
            if node.attr in names or module_private or n_tokens_write:
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llama_cpp"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            if "._" in (node.module or "") or private:
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("llama_cpp._"):
                    yield node.lineno, ast.unparse(node)


def test_private_llama_cpp_access_only_in_native() -> None:
    names = _private_names()
    assert {"_ctx", "_model", "_requires_eval", "_batch", "_init_sampler"} <= names
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
             for path in sorted(PACKAGE.rglob("*.py")) if path != NATIVE
             for line, text in sorted(_private_uses(ast.parse(path.read_text(encoding="utf-8")),
                                                    names))]
    assert not found, ("llama-cpp-python's private parts are reached only through "
                       "appliance/llm/native.py:\n" + "\n".join(found))


def test_the_guard_sees_what_native_does() -> None:
    """The scan is not blind: native.py itself is full of what it looks for."""
    uses = list(_private_uses(ast.parse(NATIVE.read_text(encoding="utf-8")), _private_names()))
    assert len(uses) >= 10


def test_ggml_type_sizes_are_the_librarys() -> None:
    """The ggml table that native reads without llama_cpp is the one llama_cpp reads."""
    import ctypes

    import llama_cpp
    from llama_cpp._ggml import libggml

    assert native.GGML_TYPE_COUNT == llama_cpp.GGML_TYPE_COUNT
    libggml.ggml_blck_size.restype = ctypes.c_int64
    libggml.ggml_type_size.restype = ctypes.c_size_t
    expected = tuple((libggml.ggml_blck_size(t), libggml.ggml_type_size(t))
                     for t in range(llama_cpp.GGML_TYPE_COUNT))
    assert native.ggml_type_sizes() == expected
    assert expected[llama_cpp.GGML_TYPE_Q4_0] == (32, 18)
