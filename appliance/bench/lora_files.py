"""Write small LoRA adapters for a GGUF model, the way ``convert_lora_to_gguf.py`` writes them.

For the adapter benchmark and the tests: random (or zero) factors of a chosen
rank on chosen tensors of chosen blocks, shaped after the base model's own
tensors (read with our GGUF reader). The file holds ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha`` and, for each adapted weight
``W`` of ggml shape ``[n_in, n_out]``, ``W.lora_a`` (numpy ``(rank, n_in)``)
and ``W.lora_b`` (numpy ``(n_out, rank)``) in f32. Needs the ``gguf`` package
(``pip install gguf``, in the ``test`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import UsageError
from appliance.llm.gguf import read_header

ATTENTION = ("attn_q", "attn_k", "attn_v", "attn_output")
"""The projections PEFT adapts most often (``target_modules=q_proj,k_proj,v_proj,o_proj``)."""


@dataclass(frozen=True)
class LoraSpec:
    """What to write: ``rank``, ``targets`` in ``blocks`` (``None``: every block).

    ``b_std`` 0 gives B = 0, an adapter that changes nothing; ``architecture``
    and ``extra_n_in`` make adapters that do not fit, for the checks.
    """

    rank: int = 8
    targets: Sequence[str] = ("attn_q", "attn_v")
    blocks: Sequence[int] | None = (0, 1)
    alpha: float | None = None
    b_std: float = 0.05
    seed: int = 0
    architecture: str | None = None
    extra_n_in: int = 0


def write_lora(path: Path, base: Path, spec: LoraSpec = LoraSpec()) -> Path:
    """Write the adapter ``spec`` describes for the model ``base`` to ``path``; returns ``path``."""
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise UsageError("writing a LoRA adapter needs the gguf package: pip install gguf") \
            from None
    header = read_header(base)
    arch = spec.architecture or str(header.metadata.get("general.architecture"))
    n_blocks = int(header.metadata.get(f"{header.metadata['general.architecture']}."
                                       "block_count", 0))
    shapes = {t.name: t.shape for t in header.tensors}
    rng = np.random.default_rng(spec.seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(spec.alpha or spec.rank))
    for block in spec.blocks if spec.blocks is not None else range(n_blocks):
        for target in spec.targets:
            name = f"blk.{block}.{target}.weight"
            n_in, n_out = shapes[name]
            n_in += spec.extra_n_in
            a = rng.normal(0.0, 1.0 / np.sqrt(n_in), (spec.rank, n_in)).astype(np.float32)
            b = (rng.normal(0.0, spec.b_std, (n_out, spec.rank)) if spec.b_std
                 else np.zeros((n_out, spec.rank))).astype(np.float32)
            writer.add_tensor(f"{name}.lora_a", a)
            writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
