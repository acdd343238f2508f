"""Route llama.cpp's own log output into the ``llama.cpp`` standard-library logger.

llama.cpp prints model-loading chatter through a C callback. We replace
llama-cpp-python's callback with one that assembles lines and hands them to
:mod:`logging`, so they pass the same structlog pipeline as everything else
and are dropped unless the level is ``debug``.
"""

from __future__ import annotations

import ctypes
import logging

import llama_cpp

_logger = logging.getLogger("llama.cpp")
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
"""ggml's levels (``ggml.h``: 1 debug, 2 info, 3 warn, 4 error, 5 continues the line);
its debug and info are chatter, for our debug level only."""
_CONTINUED = 5
_partial: list[str] = []
_line_level = [0]  # the level of the line being assembled: its first piece's


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    piece = text.decode("utf-8", errors="replace")
    if not _partial and level != _CONTINUED:
        _line_level[0] = level
    _partial.append(piece)
    if not piece.endswith("\n"):
        return
    line = "".join(_partial).rstrip()
    _partial.clear()
    severity = _LEVELS.get(_line_level[0], logging.DEBUG)
    if line and _logger.isEnabledFor(severity):
        _logger.log(severity, line)


def route_native_logs() -> None:
    """Install the callback (idempotent; the C side keeps only the last one)."""
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
