"""Chat prompts: the model's own chat template, and the system-prompt prefix it produces."""

from __future__ import annotations

from functools import lru_cache

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from appliance.errors import ModelError


class ChatPrompt:
    """Renders messages with the chat template stored in the GGUF and tokenizes them."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{llm.model_path}: the GGUF has no chat template; "
                             "use an instruct model")
        model = llm._model  # llama-cpp-python exposes token texts only here
        self._llm = llm
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(llm.token_eos()),
            bos_token=model.token_get_text(llm.token_bos()),
        )
        self.prefix_tokens = lru_cache(maxsize=8)(self._prefix_tokens)

    def tokens(self, system: str, user: str) -> list[int]:
        """The prompt tokens for one system and one user message, ready to generate from."""
        rendered = self._formatter(messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ])
        return self._llm.tokenize(rendered.prompt.encode("utf-8"),
                                  add_bos=not rendered.added_special, special=True)

    def _prefix_tokens(self, system: str) -> tuple[int, ...]:
        """The tokens every prompt with this system message starts with.

        Found as the common start of two prompts that differ only in the user
        message, so it works for any template.
        """
        a, b = self.tokens(system, "a"), self.tokens(system, "b")
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return tuple(a[:n])
