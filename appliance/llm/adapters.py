"""The LoRA adapters of a loaded model: each loaded once, one (or none) active at a time.

Loading reads an adapter's small matrices beside the model's weights (which
stay mapped and shared); switching between requests only tells llama.cpp which
set to apply, and the next decode rebuilds its graph. What switching does NOT
do is touch the KV cache: cells computed under one adapter are wrong under
another (llama.cpp's own server once reused them). So :meth:`AdapterSet.activate`
says when the active adapter changed, the engine then empties its context, and
every saved KV state is kept under the :attr:`AdapterSet.variant` it was
computed with (:class:`~appliance.llm.prefix_cache.PrefixCache`,
:class:`~appliance.llm.kv_disk.DiskKvCache`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from appliance.errors import ModelError
from appliance.llm import native
from appliance.llm.adapter_files import AdapterFile
from appliance.logs import get_logger

if TYPE_CHECKING:
    import llama_cpp

log = get_logger("adapters")

BASE_VARIANT = ""
"""The variant of KV states computed with no adapter (what states saved before adapters are)."""


class AdapterSet:
    """``files`` loaded for ``llm``'s model; the base model (no adapter) is active at first."""

    def __init__(self, llm: llama_cpp.Llama, files: Mapping[str, AdapterFile]) -> None:
        self._files = dict(files)
        self._handles = {name: native.load_lora(llm, f.path) for name, f in files.items()}
        self.active: str | None = None
        for name, f in files.items():
            log.info("adapter_loaded", adapter=name, path=str(f.path), scale=f.scale)

    @property
    def names(self) -> tuple[str, ...]:
        """The adapters a request may name."""
        return tuple(self._files)

    @property
    def variant(self) -> str:
        """What the KV cache computed from now on depends on: the active adapter, its scale."""
        return BASE_VARIANT if self.active is None else self._files[self.active].variant

    def activate(self, llm: llama_cpp.Llama, name: str | None) -> bool:
        """Apply adapter ``name`` (``None``: the base model); whether that changed anything.

        A name that is not loaded is a :class:`ModelError` and changes nothing.
        """
        if name == self.active:
            return False
        if name is not None and name not in self._files:
            known = ", ".join(self._files) or "none is configured"
            raise ModelError(f"unknown adapter {name!r}; llm.adapters has: {known}")
        native.set_loras(llm, () if name is None else
                         ((self._handles[name], self._files[name].scale),))
        self.active = name
        return True
