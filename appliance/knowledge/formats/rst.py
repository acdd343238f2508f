"""reStructuredText: titles underlined (and perhaps overlined), levels in order of first use."""

from __future__ import annotations

import re

from appliance.knowledge.document import Document, DocumentBuilder, join_lines
from appliance.knowledge.formats.inline import Emphasis, Step, apply, substitute

_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")
_TABLE_BORDER = re.compile(r"^[\s=+\-|]+$")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+(?:([\w:-]+)::(.*))?")
# Directives whose body is text worth indexing; any other directive or comment is skipped.
_KEPT = {"note", "warning", "tip", "important", "caution", "danger", "attention", "hint",
         "admonition", "topic", "sidebar", "code", "code-block", "sourcecode", "rubric"}
# Every step is linear in the line's length (see appliance.knowledge.formats.inline).
_INLINE: list[Step] = [
    substitute(r"`([^`<]+)<[^`>]*>`__?", lambda m: m[1].rstrip()),      # `text <url>`_
    # :role:`text` and :role:`text <target>`, the role starting a word.
    substitute(r"(?<![\w:-]):[\w:-]+:`([^`<]+)(<[^`>]*>)?`",
               lambda m: m[1].rstrip() if m[2] else m[1]),
    Emphasis(("``",)),
    substitute(r"`([^`]+)`_{0,2}", r"\1"),
    Emphasis(("**",)),
    Emphasis(("*",), open_before=r"(?<!\w)", open_after=r"\S", close_after=r"(?!\w)"),
    substitute(r"(?<!\s)\s*\[(?:#|\*|\d)[\w-]*\]_", ""),     # footnote references
    substitute(r"(\w)_\b", r"\1"),                            # word_ hyperlink references
]


def inline(text: str) -> str:
    """ReStructuredText inline markup removed, leaving the words."""
    return apply(_INLINE, text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _paragraph(block: list[str]) -> str:
    """A block's text; a change of indentation (a definition, a quote) starts a new line."""
    runs: list[list[str]] = []
    last = -1
    for line in block:
        if _indent(line) != last:
            runs.append([])
            last = _indent(line)
        runs[-1].append(inline(line))
    text = "\n".join(join_lines(run) for run in runs)
    if text.endswith(" ::"):     # "Paragraph ::": the marker alone goes
        return text[:-3]
    if text.endswith("::"):      # "Paragraph::" reads "Paragraph:"
        return text[:-2].rstrip() + ":"
    return text


def read(text: str) -> Document:
    """Parse a reStructuredText manual."""
    doc = DocumentBuilder()
    lines = text.splitlines()
    styles: list[tuple[str, bool]] = []
    block: list[str] = []
    skip_below: int | None = None  # inside a skipped directive: lines indented more than this

    def heading(char: str, over: bool, title: str) -> None:
        flush()
        if (char, over) not in styles:
            styles.append((char, over))
        doc.heading(styles.index((char, over)) + 1, inline(title))

    def flush() -> None:
        if block:
            doc.paragraph(_paragraph(block))
            block.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        after = lines[i + 1] if i + 1 < len(lines) else ""
        if skip_below is not None:
            if not line.strip() or _indent(line) > skip_below:
                i += 1
                continue
            skip_below = None
        if (_ADORNMENT.match(line) and after.strip() and i + 2 < len(lines)
                and _ADORNMENT.match(lines[i + 2]) and lines[i + 2][0] == line[0]):
            heading(line[0], True, after.strip())
            i += 3
            continue
        if (line.strip() and not line[0].isspace() and not block and _ADORNMENT.match(after)
                and len(after.rstrip()) >= len(line.rstrip())):
            heading(after[0], False, line.strip())
            i += 2
            continue
        if m := _DIRECTIVE.match(line):
            flush()
            name, argument = (m.group(2) or "").lower(), (m.group(3) or "").strip()
            if name in _KEPT:
                if argument and name not in ("code", "code-block", "sourcecode"):
                    doc.paragraph(inline(argument))
            else:
                skip_below = len(m.group(1))
        elif not line.strip():
            flush()
        elif not (_ADORNMENT.match(line) or _TABLE_BORDER.match(line)):
            block.append(line.rstrip())
        i += 1
    flush()
    return doc.build()
