"""BERT's uncased WordPiece tokenizer, in plain Python, for the embedding model.

It follows Hugging Face's ``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece`` as
all-MiniLM-L6-v2 uses them: control characters dropped, CJK ideographs split apart, lower
case, accents stripped, punctuation split off, then greedy longest-match word pieces
(``##`` marks a continuation) with ``[UNK]`` for a word that has no spelling in pieces.
"""

from __future__ import annotations

import functools
import unicodedata
from pathlib import Path

MAX_WORD_CHARS = 100


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2CEAF or 0xF900 <= code <= 0xFAFF
            or 0x2F800 <= code <= 0x2FA1F)


def _words(text: str) -> list[str]:
    """BERT's basic tokenization: the normalized words and punctuation marks of ``text``."""
    out: list[str] = []
    for char in unicodedata.normalize("NFD", text.lower()):
        code = ord(char)
        category = unicodedata.category(char)
        if code in (0, 0xFFFD) or category == "Mn" or (
                category.startswith("C") and char not in "\t\n\r"):
            continue
        if char.isspace():
            out.append(" ")
        elif _is_punctuation(char) or _is_cjk(code):
            out.append(f" {char} ")
        else:
            out.append(char)
    return "".join(out).split()


class WordPiece:
    """Turns text into the model's token ids, with ``[CLS]`` first and ``[SEP]`` last."""

    def __init__(self, vocab: Path) -> None:
        with vocab.open(encoding="utf-8") as f:
            self._ids = {line.rstrip("\n"): i for i, line in enumerate(f)}
        self.cls, self.sep = self._ids["[CLS]"], self._ids["[SEP]"]
        self.unknown = self._ids["[UNK]"]
        self._pieces = functools.lru_cache(maxsize=65536)(self._word_pieces)

    def _word_pieces(self, word: str) -> tuple[int, ...]:
        if len(word) > MAX_WORD_CHARS:
            return (self.unknown,)
        pieces: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if (found := self._ids.get(piece)) is not None:
                    pieces.append(found)
                    break
                end -= 1
            else:
                return (self.unknown,)
            start = end
        return tuple(pieces)

    def encode(self, text: str, max_tokens: int) -> list[int]:
        """Token ids of ``text``, cut to ``max_tokens`` including ``[CLS]`` and ``[SEP]``."""
        ids = [self.cls]
        for word in _words(text):
            ids.extend(self._pieces(word))
            if len(ids) >= max_tokens - 1:
                break
        return [*ids[:max_tokens - 1], self.sep]
