"""A person's question turned into a safe FTS5 query: its words, quoted, OR-ed.

User text never reaches ``MATCH`` as it is: ``wi-fi``, ``it's``, ``c++`` or a lone ``AND``
are FTS5 syntax errors or column filters. Words are taken as FTS5's unicode61 tokenizer
sees them (letters and digits), common function words dropped, each one quoted.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+")

STOPWORDS = frozenset((
    "a", "about", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as",
    "at", "be", "been", "before", "being", "both", "but", "by", "can", "could", "did", "do",
    "does", "doing", "don", "down", "during", "each", "for", "from", "had", "has", "have",
    "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into",
    "is", "it", "its", "itself", "just", "let", "me", "more", "most", "my", "myself", "no",
    "nor", "not", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "out",
    "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the",
    "their", "theirs", "them", "then", "there", "these", "they", "this", "those", "through",
    "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when",
    "where", "which", "while", "who", "whom", "why", "will", "with", "won", "would", "you",
    "your", "yours", "s", "t", "d", "ll", "m", "re", "ve",
))
"""English words too common to tell one passage from another."""


def terms(question: str) -> list[str]:
    """The distinct search words of ``question``, lower-cased, in order."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(question.lower()):
        if word not in STOPWORDS:
            seen.setdefault(word)
    return list(seen)


def match_expression(words: list[str]) -> str:
    """An FTS5 query matching any of ``words``, each quoted; "" for no words."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
