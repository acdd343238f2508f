r"""Grammar-constrained output: a JSON schema made a llama.cpp grammar, bounded, once per schema.

llama-cpp-python's converter (``SchemaConverter``, pinned with the package)
writes one GBNF rule per schema node. :class:`_BoundedConverter` changes three
of its methods:

* ``_add_rule`` counts the grammar's size (each distinct rule once) and the
  rule text handed to it (repeats included: see :data:`WORK_PER_BYTE`), and
  raises :class:`GrammarError` as soon as either passes its limit: a schema
  whose grammar would blow up stops early, before the blow-up is built. It
  also numbers rules in constant time where the original tries the numbered
  names one by one (quadratic when many properties share a name once their
  punctuation is replaced).
* ``_format_literal`` escapes the backslashes of JSON's escapes. The
  original escapes only quotes and line breaks, so a property name or a
  constant with ``\`` or ``"`` ended its literal early and llama.cpp refused
  the whole grammar (and ``\n`` in a constant made the model write a raw
  line break, which is not JSON).
* ``_generate_constant_rule`` refuses ``NaN`` and infinities, which are not
  JSON: the grammar must never make the model write them.

The limit counts what the converter writes, not what it computes before it
writes it: repetition bounds (``maxLength``, ``minItems``...) are expanded
first, so schemas from outside are cut down to the subset
:mod:`appliance.api.schema` keeps (no string lengths, ``maxItems`` at most 8)
before they come here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

from appliance.errors import ModelError

if TYPE_CHECKING:
    from llama_cpp.llama_grammar import LlamaGrammar


def _converter_module() -> ModuleType:
    """llama-cpp-python's ``llama_grammar`` module, without the package around it.

    Its schema converter is plain Python (the standard library only), but
    importing it as ``llama_cpp.llama_grammar`` first runs the package's
    ``__init__``, which loads libllama, numpy and jinja2: 0.6 s and 30 MB in the
    supervisor, which checks client schemas with it and runs no model. In the
    worker, where the package is loaded anyway, this is the package's module.
    """
    if "llama_cpp" in sys.modules:
        import llama_cpp.llama_grammar

        return llama_cpp.llama_grammar
    package = importlib.util.find_spec("llama_cpp")  # located, not imported
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("llama_cpp")
    location = f"{next(iter(package.submodule_search_locations))}/llama_grammar.py"
    spec = importlib.util.spec_from_file_location("appliance.llm._llama_grammar", location)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_converter = _converter_module()
INVALID_RULE_CHARS_RE: re.Pattern[str] = _converter.INVALID_RULE_CHARS_RE

MAX_GRAMMAR_BYTES = 8 << 20
"""The most grammar text the model's worker builds for one request.

Every schema an API client sends gets a far smaller limit of its own
(:data:`appliance.api.schema.MAX_GRAMMAR_BYTES`); this one holds the reply
grammar of all its tools together (64 at their own limit stay under it, though
their rules' names grow longer inside the reply: about 2.4 times the text).
"""

WORK_PER_BYTE = 4
"""Rule text the converter may write, repeated rules included, per byte of the grammar's limit.

It writes the rules of an object's optional properties over and over (48
optional properties: 1,226 rules handed in, 99 kept), so a schema can cost far
more to convert than its grammar's size shows.
"""
_JSON_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")
_SMALLER = "use a smaller schema (fewer properties, alternatives or $ref levels)"


class GrammarError(ModelError):
    """A JSON schema that cannot be turned into a grammar, or whose grammar is too large."""


def to_gbnf(schema: str, limit: int = MAX_GRAMMAR_BYTES) -> str:
    """The GBNF grammar of ``schema`` (JSON text); :class:`GrammarError` past ``limit`` bytes."""
    try:
        converter = _BoundedConverter(limit)
        converter.visit(converter.resolve_refs(json.loads(schema), "input"), "")
        grammar: str = converter.format_grammar()
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError) as exc:
        raise GrammarError(f"the output schema cannot be turned into a grammar: {exc}") from None
    return grammar


def grammar_for(schema: str | None) -> LlamaGrammar | None:
    """The grammar for a JSON schema (JSON text), or ``None`` for free text."""
    return None if schema is None else _compiled(schema)


@lru_cache(maxsize=32)
def _compiled(schema: str) -> LlamaGrammar:
    from llama_cpp.llama_grammar import LlamaGrammar  # the worker's: the model's own class

    return LlamaGrammar.from_string(to_gbnf(schema), verbose=False)


class _BoundedConverter(_converter.SchemaConverter):  # type: ignore[misc]
    """llama-cpp-python's converter with a size limit and correct literals (module docstring)."""

    def __init__(self, limit: int) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self._limit = limit
        self._left = limit  # bytes of distinct rules: the grammar's size
        self._work = WORK_PER_BYTE * limit  # bytes of rules handed in, repeated ones included
        self._keys: dict[tuple[str, str], str] = {(k, v): k for k, v in self._rules.items()}
        self._next: dict[str, int] = {}

    def _add_rule(self, name: str, rule: str) -> str:
        size = len(name) + len(rule) + 6  # "name ::= rule\n"
        self._work -= size
        if self._work < 0:
            raise GrammarError(f"the output schema's grammar takes over "
                               f"{WORK_PER_BYTE * self._limit} bytes of rules to build "
                               f"(many optional properties?); {_SMALLER}")
        base = INVALID_RULE_CHARS_RE.sub("-", name)
        key = self._keys.get((base, rule))
        if key is None:
            self._left -= size
            if self._left < 0:
                raise GrammarError(f"the output schema's grammar is over {self._limit} bytes; "
                                   f"{_SMALLER}")
            key, n = base, self._next.get(base, 0)
            while key in self._rules:  # the name is another rule's: number it
                key, n = f"{base}{n}", n + 1
            self._next[base] = n
            self._keys[(base, rule)] = key
            self._rules[key] = rule
        return key

    def _format_literal(self, literal: str) -> str:
        r"""A GBNF literal matching ``literal``, a JSON text, as JSON may write it.

        GBNF reads ``\uXXXX`` as the character itself, which JSON may also
        write as it is: such an escape stays, so the model writes ``é``, not
        ``\u00e9``. Every other escape (``\"``, ``\\``, ``\n``, control
        characters, surrogate halves) must be matched as written: its
        backslash is escaped.
        """
        escaped: str = super()._format_literal(_JSON_ESCAPE.sub(_gbnf_escape, literal))
        return escaped

    def _generate_constant_rule(self, value: Any) -> str:
        return self._format_literal(json.dumps(value, allow_nan=False))


def _gbnf_escape(escape: re.Match[str]) -> str:
    """One JSON escape as GBNF must write it to match (see ``_format_literal``)."""
    code = escape.group(1)
    if len(code) == 5:  # uXXXX
        value = int(code[1:], 16)
        if value >= 0x20 and not 0xD800 <= value < 0xE000:
            return escape.group(0)
    return escape.group(0).replace("\\", "\\\\")
