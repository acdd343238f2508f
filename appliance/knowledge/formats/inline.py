r"""Inline markup removed in linear time, however the text is written.

A manual is outside text: one line can be a megabyte of ``**`` openers that never close.
A pattern like ``\*\*(.+?)\*\*`` tried at every opener scans to the end of the line from
each of them, which is quadratic (hours for a 1 MB line). So the readers strip markup with
patterns that never scan the same text twice:

* :class:`Emphasis` pairs delimiters (``**bold**``, ``_it_``, ````code````) as the lazy
  pattern ``D(.+?)D`` would, with the same conditions around the opener and the closer,
  but finds every candidate closer in one pass and pairs each opener with a binary search.
* :class:`Wrapped` handles spans whose inside cannot contain their own closer
  (``[text](url)``, ``<tag>``): a failed attempt consumes what it scanned, so the next
  attempt starts past it, and the replacement keeps an unclosed span as it was.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Sequence

Step = Callable[[str], str]
"""One cleanup step: text in, text out."""


def apply(steps: Sequence[Step], text: str) -> str:
    """``text`` through each step in turn."""
    for step in steps:
        text = step(text)
    return text


def substitute(pattern: str, repl: str | Callable[[re.Match[str]], str]) -> Step:
    """A plain ``re.sub`` step, for a pattern that is linear as written.

    Linear means each attempt scans no further than where the next one can start.
    """
    return functools.partial(re.compile(pattern).sub, repl)


class Emphasis:
    r"""Delimited spans unwrapped, leaving their inside, as ``re.sub`` would do it.

    The pattern is ``OPEN_BEFORE(D)(?=OPEN_AFTER)(.+?)CLOSE_BEFORE(?=D CLOSE_AFTER)`` for
    each delimiter D, tried in the order given at each position, left to right without
    overlaps, line by line. The conditions are regex fragments: ``open_before`` and
    ``close_before`` lookbehinds (``(?<![\w*])``, ``(?<=\S)``), ``open_after`` what must
    follow an opener (``\S``), ``close_after`` a lookahead after a closer (``(?!\w)``).
    """

    def __init__(self, delimiters: Sequence[str], *, open_before: str = "",
                 open_after: str = "", close_before: str = "", close_after: str = "") -> None:
        self._delimiters = tuple(delimiters)
        self._openers = [re.compile(f"{open_before}(?={re.escape(d)}{open_after})")
                         for d in self._delimiters]
        self._closers = [re.compile(f"{close_before}(?={re.escape(d)}{close_after})")
                         for d in self._delimiters]

    def __call__(self, text: str) -> str:
        return "\n".join(self._line(line) for line in text.split("\n"))

    def _line(self, line: str) -> str:
        if not any(d in line for d in self._delimiters):
            return line
        closers = [[m.start() for m in c.finditer(line)] for c in self._closers]
        starts: dict[int, list[int]] = {}
        for kind, opener in enumerate(self._openers):
            for m in opener.finditer(line):
                starts.setdefault(m.start(), []).append(kind)
        out: list[str] = []
        done = 0
        for start in sorted(starts):
            if start < done:
                continue
            for kind in starts[start]:
                width = len(self._delimiters[kind])
                found = closers[kind]
                i = bisect.bisect_left(found, start + width + 1)  # the inside is not empty
                if i < len(found):
                    out += [line[done:start], line[start + width:found[i]]]
                    done = found[i] + width
                    break
        out.append(line[done:])
        return "".join(out)


class Wrapped:
    """``pattern`` replaced by ``repl`` of its match where group ``closed`` took part.

    Where that group did not take part, the match is left as it was. ``pattern`` must
    always consume the text its attempt scanned, with the closing part optional
    (``<([^>]*)(>)?``): the unclosed attempt then matches too, and the next one starts
    after it instead of rescanning the same text.
    """

    def __init__(self, pattern: str, repl: Callable[[re.Match[str]], str],
                 closed: int | str) -> None:
        self._pattern, self._repl, self._closed = re.compile(pattern), repl, closed

    def _replace(self, m: re.Match[str]) -> str:
        return self._repl(m) if m.group(self._closed) is not None else m.group(0)

    def __call__(self, text: str) -> str:
        return self._pattern.sub(self._replace, text)
