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

# Where a piece ends: after a sentence mark that whitespace follows (so "3.5" stays whole),
# or before a line break. Each search looks at new text once, plus the one character before it.
_MARKS = frozenset(".!?。！？")
_END = re.compile(r"[.!?。！？]\s|\n")
_WORD_END = re.compile(r"\S\s")
_CLAUSE_END = re.compile(r"[,;:，、]\s")
_SOLID = re.compile(r"\S")
# Leading whitespace of a line, not of several: ``\s*`` would rescan a run of empty lines
# from each of them (quadratic in the run's length).
_MARKUP = re.compile(r"[*_`#]+|^[^\S\n]*[-•]\s+", re.M)


def for_speech(text: str) -> str:
    """``text`` without the markdown a model likes to write (bullets, emphasis, code marks)."""
    return " ".join(_MARKUP.sub("", text).split())


def sentences(text: str) -> list[str]:
    """A whole text's pieces (whole sentences and lines)."""
    splitter = SentenceSplitter()
    return [*splitter.feed(text), *splitter.flush()]


class SentenceSplitter:
    """Collects streamed text and hands out speakable pieces as soon as they are complete.

    Linear in the text fed: each delta is searched once (with the character
    before it, where a sentence mark may wait for its space), and the text of
    an unfinished piece is joined only when the piece ends, however many
    deltas it came in.

    >>> splitter = SentenceSplitter(early_words=3)
    >>> list(splitter.feed("The weather today is"))
    ['The weather today']
    >>> list(splitter.feed(" sunny. It is warm. "))
    ['is sunny.', 'It is warm.']
    """

    def __init__(self, early_words: int = 0) -> None:
        self._early = early_words > 0  # until the first piece is out
        self._early_words = max(early_words, 1)
        self._start_piece()

    def _start_piece(self) -> None:
        self._parts: list[str] = []  # the unfinished piece, as it came
        self._size = 0
        self._last = ""  # its last character, if not a space: a mark or a word may end at it
        self._words_left = self._early_words
        self._solid: int | None = None  # where its first non-space is
        self._cut: int | None = None  # where an early first piece may end

    def feed(self, delta: str) -> Iterator[str]:
        """Add text; yields the pieces it completed."""
        if not delta:
            return
        text, offset = self._last + delta, self._size - len(self._last)
        self._parts.append(delta)
        self._size += len(delta)
        self._last = "" if delta[-1].isspace() else delta[-1]
        ends = [(offset + m.start() + (m.group() != "\n"), offset + m.end())
                for m in _END.finditer(text)]
        if ends:
            self._early = False
            yield from self._cut_at(ends)
        elif self._early:
            self._find_early_cut(text, offset)
            if self._cut is not None and self._last not in _MARKS:
                # (a mark at the end may be a sentence's: better spoken in one piece)
                self._early = False
                yield from self._cut_at([(self._cut, self._cut)])

    def flush(self) -> Iterator[str]:
        """The rest, at the end of the answer."""
        rest = "".join(self._parts).strip()
        self._start_piece()
        if rest:
            yield rest

    def _cut_at(self, ends: list[tuple[int, int]]) -> Iterator[str]:
        """The pieces that end at each ``(end, next piece's start)``; keeps the rest."""
        text, last = "".join(self._parts), self._last
        start = 0
        pieces = []
        for end, after in ends:
            pieces.append(text[start:end].strip())
            start = after
        self._start_piece()
        rest = text[start:]
        if rest:
            self._parts, self._size, self._last = [rest], len(rest), last
        yield from (piece for piece in pieces if piece)

    def _find_early_cut(self, text: str, offset: int) -> None:
        """Where the first piece may end: after ``early_words`` words or its first clause."""
        if self._cut is not None:
            return
        cuts = []
        for match in _WORD_END.finditer(text):
            self._words_left -= 1
            if self._words_left == 0:
                cuts.append(offset + match.end())
                break
        if self._solid is None and (solid := _SOLID.search(text)) is not None:
            self._solid = offset + solid.start()
        if self._solid is not None:
            clause = _CLAUSE_END.search(text, max(self._solid - offset + 1, 0))
            if clause is not None:
                cuts.append(offset + clause.end())
        self._cut = min(cuts, default=None)


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
