"""LoRA adapter files: where each configured one is, whether it fits the model, who uses it.

A LoRA adapter adds ``scale * alpha / rank * B(A x)`` to some of the model's
matrix products ``W x``, so it is only meaningful for the very model it was
trained on: same architecture, and for each adapted tensor ``W`` (ggml order
``[n_in, n_out]``) an ``A`` of ``[n_in, rank]`` and a ``B`` of ``[rank, n_out]``.
llama.cpp checks this only when the worker loads it; :func:`check_adapters`
makes the same checks from the GGUF headers (our own reader, no llama.cpp), so
that ``appliance config check`` and ``appliance run`` refuse an adapter that does
not fit with one line at its key.

Nothing here imports llama_cpp: the supervisor and ``config check`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.catalog import lookup
from appliance.config.schema import LlmSettings, Settings
from appliance.errors import CatalogError, ConfigError, ModelError
from appliance.llm.gguf import GgufHeader, TensorInfo, check_model_file

LORA_PARTS = ("lora_a", "lora_b")
"""The suffixes of an adapted tensor's two factors, as ``convert_lora_to_gguf.py`` names them."""


@dataclass(frozen=True)
class AdapterFile:
    """A configured adapter, found on disk.

    ``variant`` is what a KV state computed under it depends on (its name,
    scale and file): states are kept under it, so a prefix computed with one
    adapter is never reused under another, or under a changed file or scale.
    """

    name: str
    path: Path
    scale: float
    variant: str


def resolve_adapters(settings: Settings) -> dict[str, AdapterFile]:
    """Every adapter of ``llm.adapters``, by name; a missing one is a located ConfigError."""
    found: dict[str, AdapterFile] = {}
    for name, adapter in settings.llm.adapters.items():
        key = f"llm.adapters.{name}"
        path = adapter.path
        if adapter.model is not None:
            key += ".model"
            path = _catalog_file(settings, adapter.model, key)
        if path is None:  # the config checks require one of the two
            raise _fail(settings, key, "give path: (a .gguf file) or model: (a catalog name)")
        try:
            st = path.stat()
        except OSError as exc:
            raise _fail(settings, key, f"{path}: cannot read: {exc.strerror}") from None
        variant = f"lora:{name}:{adapter.scale!r}:{path.name}:{st.st_size}:{st.st_mtime_ns}"
        found[name] = AdapterFile(name, path, adapter.scale, variant)
    return found


def _catalog_file(settings: Settings, model: str, key: str) -> Path:
    try:
        entry = lookup(model)
        path = entry.location(settings.models_dir)
    except CatalogError as exc:
        raise _fail(settings, key, str(exc)) from None
    if entry.kind != "lora":
        raise _fail(settings, key, f"{model!r} is a {entry.kind} model, not a LoRA adapter")
    if not path.is_file():
        raise _fail(settings, key, f"{model!r} is not downloaded to {path}; "
                                   f"run: appliance models pull {model}")
    return path


def check_adapters(settings: Settings, model: Path) -> dict[str, AdapterFile]:
    """Resolve every adapter and check that it fits ``model``; the first misfit is one line."""
    adapters = resolve_adapters(settings)
    if not adapters:
        return adapters
    base = check_model_file(model)
    for name, adapter in adapters.items():
        key = f"llm.adapters.{name}" + (".model" if settings.llm.adapters[name].model
                                         else ".path")
        try:
            check_fit(base, adapter.path)
        except ModelError as exc:
            raise _fail(settings, key, str(exc)) from None
    return adapters


def check_fit(base: GgufHeader, path: Path) -> None:
    """Raise :class:`ModelError` unless ``path`` is a whole LoRA GGUF that fits ``base``."""
    header = check_model_file(path)
    meta = header.metadata

    def fail(problem: str) -> ModelError:
        return ModelError(f"{path}: {problem}")

    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise fail(f"not a LoRA adapter (general.type is {meta.get('general.type')!r} and "
                   f"adapter.type {meta.get('adapter.type')!r}; expected 'adapter' and 'lora')")
    arch, base_arch = meta.get("general.architecture"), base.metadata.get("general.architecture")
    if arch != base_arch:
        raise fail(f"made for the {arch!r} architecture, but the model is {base_arch!r}")
    weights = {t.name: t for t in base.tensors}
    pairs: dict[str, dict[str, TensorInfo]] = {}
    for tensor in header.tensors:
        stem, _, part = tensor.name.rpartition(".")
        if part in LORA_PARTS:  # llama.cpp discards anything else, and so do we
            pairs.setdefault(stem, {})[part] = tensor
    if not pairs:
        raise fail("holds no .lora_a/.lora_b tensors")
    for stem, parts in pairs.items():
        if len(parts) != 2:
            missing = next(p for p in LORA_PARTS if p not in parts)
            raise fail(f"{stem} has no .{missing} tensor")
        a, b, weight = parts["lora_a"], parts["lora_b"], weights.get(stem)
        if weight is None:
            raise fail(f"adapts {stem}, which the model does not have")
        if len(a.shape) != 2 or len(b.shape) != 2 or len(weight.shape) != 2:
            raise fail(f"{stem}: the adapter's factors and the weight must be matrices")
        if a.shape[0] != weight.shape[0] or b.shape[1] != weight.shape[1]:
            raise fail(f"{stem}: lora_a {list(a.shape)} and lora_b {list(b.shape)} do not fit "
                       f"the model's {list(weight.shape)} (another model, or A/B swapped?)")
        if a.shape[1] != b.shape[0]:
            raise fail(f"{stem}: lora_a has rank {a.shape[1]} but lora_b {b.shape[0]}")


def adapter_for(llm: LlmSettings, source: str, rule_adapter: str | None = None,
                named: str | None = None) -> str | None:
    """The adapter a request uses: the one it names, its rule's, its source's, or none.

    ``source`` is the request's source (``voice``, ``mqtt``, ``sensor``, ``api``),
    ``rule_adapter`` the ``adapter:`` of the sensor rule that made it, ``named``
    the adapter a client chose by model name (``smollm2:plant_care``, already in
    its ``ChatRequest.adapter``). ``None``: the base model.
    """
    for choice in (named, rule_adapter):
        if choice is not None:
            return choice
    return llm.adapter_for.get(source)


def _fail(settings: Settings, key: str, problem: str) -> ConfigError:
    return ConfigError(problem, file=settings.source, line=settings.line_of(key), key=key)
