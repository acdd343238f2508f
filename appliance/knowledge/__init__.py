"""Answers from the device's own manuals: format readers, chunking, the index, retrieval.

``KnowledgeIndex`` adds and removes manuals in ``<data_dir>/knowledge.sqlite3``;
``Retriever`` finds the passages that answer a question, as :class:`Passage` objects that
carry their source and a stable content hash.
"""

from __future__ import annotations

from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.index import Added, DocumentInfo, KnowledgeIndex
from appliance.knowledge.retriever import Passage, Retriever
from appliance.knowledge.store import index_path

__all__ = ["Added", "DocumentInfo", "KnowledgeError", "KnowledgeIndex", "Passage",
           "Retriever", "index_path"]
