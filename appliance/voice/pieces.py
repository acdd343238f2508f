"""Answer text cut into pieces that can be spoken while the rest is generated.

Speech waits for text, so where the text is cut decides when the speaker
starts. Pieces end at sentence ends and line breaks. The first piece of an
answer may end earlier, at its first clause mark or after ``early_words``
words, because the wait for a whole first sentence is what a listener hears
as a slow device; after that, whole sentences keep the voice's phrasing
natural. :class:`SpokenAnswer` is what both the speaker and ``appliance
listen`` use: the pieces, cleaned of markup and filtered in toy mode.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from appliance.config.schema import VoiceSettings
from appliance.voice.kid_safe import KidFilter

# A sentence ends at its mark once whitespace follows (so "3.5" stays whole), or at a line break.
_SENTENCE = re.compile(r"(.+?)(?:(?<=[.!?。！？])(\s+|$)|(\n\s*))", re.S)
_CLAUSE = re.compile(r"(\s*\S.*?[,;:，、])\s+", re.S)
_MARKUP = re.compile(r"[*_`#]+|^\s*[-•]\s+", re.M)


def for_speech(text: str) -> str:
    """``text`` without the markdown a model likes to write (bullets, emphasis, code marks)."""
    return " ".join(_MARKUP.sub("", text).split())


class SentenceSplitter:
    """Collects streamed text and hands out speakable pieces as soon as they are complete.

    >>> splitter = SentenceSplitter(early_words=3)
    >>> list(splitter.feed("The weather today is"))
    ['The weather today']
    >>> list(splitter.feed(" sunny. It is warm. "))
    ['is sunny.', 'It is warm.']
    """

    def __init__(self, early_words: int = 0) -> None:
        self._buffer = ""
        self._early = early_words > 0  # until the first piece is out
        self._words = re.compile(rf"\s*(?:\S+\s+){{{max(early_words, 1)}}}")

    def feed(self, delta: str) -> Iterator[str]:
        """Add text; yields the pieces it completed."""
        self._buffer += delta
        if self._early and (piece := self._first_piece()):
            yield piece
        while (match := _SENTENCE.match(self._buffer)) and (match.group(2) or match.group(3)):
            self._early = False
            yield match.group(1).strip()
            self._buffer = self._buffer[match.end():]

    def flush(self) -> Iterator[str]:
        """The rest, at the end of the answer."""
        rest, self._buffer = self._buffer.strip(), ""
        if rest:
            yield rest

    def _first_piece(self) -> str | None:
        if _SENTENCE.match(self._buffer):
            return None  # a whole sentence is (about to be) there: better spoken in one piece
        ends = [m.end() for m in (self._words.match(self._buffer), _CLAUSE.match(self._buffer))
                if m is not None]
        if not ends:
            return None
        end = min(ends)
        piece, self._buffer, self._early = self._buffer[:end].strip(), self._buffer[end:], False
        return piece


class SpokenAnswer:
    """One streamed answer as the pieces to speak, and the text they add up to.

    Pieces lose their markup; in toy mode (``voice.kid_safe``) a piece with a
    blocked word becomes the refusal, and pieces are whole sentences so that
    the filter judges a whole sentence before any of it is heard.
    """

    def __init__(self, voice: VoiceSettings, early_words: int | None = None) -> None:
        self._kid = KidFilter(voice.block_list) if voice.kid_safe else None
        early = voice.early_words if early_words is None else early_words
        self._splitter = SentenceSplitter(0 if self._kid else early)
        self._spoken: list[str] = []

    @property
    def text(self) -> str:
        """What has been handed out so far, as one text."""
        return " ".join(self._spoken)

    def feed(self, delta: str) -> Iterator[str]:
        """Add streamed text; yields the pieces ready to speak."""
        for piece in self._splitter.feed(delta):
            yield from self._ready(piece)

    def flush(self) -> Iterator[str]:
        """The last pieces, at the end of the answer."""
        for piece in self._splitter.flush():
            yield from self._ready(piece)

    def _ready(self, piece: str) -> Iterator[str]:
        piece = for_speech(piece)
        if self._kid is not None:
            piece = self._kid.sentence(piece)
        if piece:
            self._spoken.append(piece)
            yield piece
