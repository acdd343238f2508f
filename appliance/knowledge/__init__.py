"""Answers from the device's own manuals: format readers, chunking, the index, retrieval.

``KnowledgeIndex`` adds and removes manuals in ``<data_dir>/knowledge.sqlite3``;
``Retriever`` finds the passages that answer a question, as :class:`Passage` objects that
carry their source and a stable content hash.

The names below load their module (and numpy, SQLite's index, onnxruntime) only when
first used: ``appliance --help`` and ``appliance run`` on a device without manuals never
pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.knowledge.errors import KnowledgeError
    from appliance.knowledge.index import Added, DocumentInfo, KnowledgeIndex
    from appliance.knowledge.retriever import Passage, Retriever
    from appliance.knowledge.store import index_path

__all__ = ["Added", "DocumentInfo", "KnowledgeError", "KnowledgeIndex", "Passage",
           "Retriever", "index_path"]
_HOMES = {"KnowledgeError": "errors", "Added": "index", "DocumentInfo": "index",
          "KnowledgeIndex": "index", "Passage": "retriever", "Retriever": "retriever",
          "index_path": "store"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
