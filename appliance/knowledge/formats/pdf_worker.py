"""The PDF text extractor, run in a child process: ``python -m ... MAX_PAGES``, the PDF on stdin.

A hostile or broken PDF can make pypdf slow, deep or hungry, so the parent runs this with a
time limit per page and this process caps its own memory. It writes JSON lines to stdout:
first ``{"pages", "title", "outline": [[level, title, page], ...]}``, then one
``{"page", "text"}`` per page, or a single ``{"error"}`` line naming what is wrong.
"""

from __future__ import annotations

import io
import json
import logging
import resource
import sys
from typing import Any

MEMORY_LIMIT = 1 << 30
"""Address space this process may use (1 GiB): a decompression bomb fails, not the device."""


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _outline(reader: Any) -> list[list[Any]]:
    """``[level, title, page]`` for each bookmark, 1-based pages; [] if the outline is broken."""
    entries: list[list[Any]] = []

    def walk(items: list[Any], level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            page = reader.get_destination_page_number(item)
            title = item.title if isinstance(item.title, str) else ""
            if page is not None and page >= 0 and title.strip():
                entries.append([level, title.strip(), page + 1])

    try:
        walk(reader.outline, 1)
    except Exception:  # a malformed outline only costs the headings, not the text
        return []
    return entries


def extract(data: bytes, max_pages: int) -> None:
    """Write the metadata and text of the PDF ``data`` as JSON lines, or one error line."""
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import FileNotDecryptedError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            _emit({"error": "encrypted with a password; save an unprotected copy and add that"})
            return
        count = len(reader.pages)
        if count > max_pages:
            _emit({"error": f"{count} pages is over the limit of {max_pages}; split the file"})
            return
        title = reader.metadata.title if reader.metadata else None
        _emit({"pages": count, "title": title if isinstance(title, str) else None,
               "outline": _outline(reader)})
        for number, page in enumerate(reader.pages, 1):
            _emit({"page": number, "text": page.extract_text() or ""})
    except FileNotDecryptedError:  # AES too: cryptography is a dependency (signed catalogs)
        _emit({"error": "encrypted with a password; save an unprotected copy and add that"})
    except MemoryError:
        _emit({"error": f"needs more than {MEMORY_LIMIT >> 20} MiB to read; it may be a "
                        "decompression bomb"})
    except Exception as exc:  # any failure of a broken file is one line for the user
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        kind = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        _emit({"error": f"not a readable PDF ({kind})"})


def main(argv: list[str]) -> int:
    """Entry point of the child process."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
    sys.setrecursionlimit(5000)
    extract(sys.stdin.buffer.read(), int(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
