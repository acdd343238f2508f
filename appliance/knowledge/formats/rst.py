"""reStructuredText: titles underlined (and perhaps overlined), levels in order of first use."""

from __future__ import annotations

import re

from appliance.knowledge.document import Document, DocumentBuilder, join_lines

_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")
_TABLE_BORDER = re.compile(r"^[\s=+\-|]+$")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+(?:([\w:-]+)::(.*))?")
# Directives whose body is text worth indexing; any other directive or comment is skipped.
_KEPT = {"note", "warning", "tip", "important", "caution", "danger", "attention", "hint",
         "admonition", "topic", "sidebar", "code", "code-block", "sourcecode", "rubric"}
_INLINE = [
    (re.compile(r"`([^`<]+?)\s*<[^>]*>`__?"), r"\1"),        # `text <url>`_
    (re.compile(r":[\w:-]+:`([^`<]+?)(?:\s*<[^>]*>)?`"), r"\1"),  # :role:`text`
    (re.compile(r"``(.+?)``"), r"\1"),
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),
    (re.compile(r"\*\*(.+?)\*\*"), r"\1"),
    (re.compile(r"(?<!\w)\*(\S.*?)\*(?!\w)"), r"\1"),
    (re.compile(r"\s*\[(?:#|\*|\d+)[\w-]*\]_"), ""),          # footnote references
    (re.compile(r"(\w)_\b"), r"\1"),                          # word_ hyperlink references
]


def inline(text: str) -> str:
    """ReStructuredText inline markup removed, leaving the words."""
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return text


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
    return re.sub(r"\s*::$", ":", text) if not text.endswith(" ::") else text[:-3]


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
