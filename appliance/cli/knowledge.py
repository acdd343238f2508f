"""``appliance knowledge add PATH... | list | remove | search QUERY | warm``: the device's manuals.

The index lives at ``<data_dir>/knowledge.sqlite3``. Each file is indexed under its name; a
bad file gets one line on stderr and the rest of the batch still goes in (exit 1 if any
failed).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import TextIO

from appliance.cli.arguments import positive_int
from appliance.config import Settings
from appliance.knowledge.errors import KnowledgeError

PROGRESS_FROM = 20
"""Show progress on a terminal for documents with at least this many pages or passages."""
_STAGES = {"pages": "reading page", "passages": "embedding passage"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``knowledge`` command group."""
    p = sub.add_parser("knowledge", help="index and search the device's manuals")
    cmds = p.add_subparsers(dest="knowledge_command", required=True, metavar="SUBCOMMAND")
    add = cmds.add_parser("add", help="index manuals (Markdown, AsciiDoc, reStructuredText, "
                                      "text, HTML, PDF); a changed file replaces its old text")
    add.add_argument("paths", nargs="+", metavar="PATH")
    add.set_defaults(handler=run_add)
    listing = cmds.add_parser("list", help="the indexed manuals")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(handler=run_list)
    remove = cmds.add_parser("remove", help="take a manual out of the index")
    remove.add_argument("name", help="its name as listed (a path is taken by its file name)")
    remove.set_defaults(handler=run_remove)
    search = cmds.add_parser("search", help="the passages that best answer a question")
    search.add_argument("query")
    search.add_argument("--k", type=positive_int, default=3, metavar="N",
                        help="how many (default 3)")
    search.add_argument("--json", action="store_true",
                        help='print [{"doc", "section", "page"?, "score", "text"}, ...]')
    search.set_defaults(handler=run_search)
    warm = cmds.add_parser("warm", help="precompute the model's state after each passage "
                                        "(within knowledge.cache_mb), e.g. overnight")
    warm.set_defaults(handler=run_warm)
    again = cmds.add_parser("reembed", help="compute the passages' vectors again, for an "
                                            "index an older version made")
    again.set_defaults(handler=run_reembed)


class _Progress:
    """Progress of one file on a terminal: a line rewritten in place, cleared at the end."""

    def __init__(self, name: str, stream: TextIO) -> None:
        self.name, self.stream, self.shown = name, stream, False

    def __call__(self, stage: str, done: int, total: int) -> None:
        if total < PROGRESS_FROM:
            return
        self.stream.write(f"\r{self.name}: {_STAGES.get(stage, stage)} {done}/{total}\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _settings(args: argparse.Namespace) -> Settings:
    from appliance.cli import load

    return load(args)


def run_add(args: argparse.Namespace) -> int:
    """Index each file named; one line per file."""
    from appliance.knowledge import KnowledgeIndex, index_path  # numpy, onnxruntime: only here

    settings = _settings(args)
    index = KnowledgeIndex(index_path(settings.data_dir))
    failed = 0
    try:
        for raw in args.paths:
            progress = _Progress(Path(raw).name, sys.stderr) if sys.stderr.isatty() else None
            try:
                added = index.add(Path(raw), max_file_mb=settings.knowledge.max_file_mb,
                                  progress=progress)
            except KnowledgeError as exc:
                if progress:
                    progress.clear()
                print(f"appliance: {exc}", file=sys.stderr)
                failed += 1
                continue
            if progress:
                progress.clear()
            print(added.line())
    finally:
        index.close()
    return 1 if failed else 0


def run_list(args: argparse.Namespace) -> int:
    """Print the indexed manuals."""
    from appliance.knowledge import KnowledgeIndex, index_path  # numpy, onnxruntime: only here

    settings = _settings(args)
    path = index_path(settings.data_dir)
    if not path.exists():
        docs = []
    else:
        index = KnowledgeIndex(path)
        try:
            docs = index.documents()
        finally:
            index.close()
    if args.json:
        print(json.dumps([{"name": d.name, "format": d.format, "title": d.title,
                           "passages": d.chunks, "pages": d.pages, "bytes": d.bytes,
                           "added": d.added, "source": d.source} for d in docs]))
        return 0
    if not docs:
        print("no manuals indexed; add some with: appliance knowledge add PATH...")
        return 0
    rows = [("NAME", "FORMAT", "PASSAGES", "PAGES", "SIZE", "ADDED", "TITLE")]
    rows += [(d.name, d.format, str(d.chunks), str(d.pages or "-"), f"{d.bytes / 1e3:.0f} kB",
              d.added[:10], d.title or "") for d in docs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove one manual."""
    from appliance.knowledge import KnowledgeIndex, index_path  # numpy, onnxruntime: only here
    from appliance.knowledge.index import removed_line

    settings = _settings(args)
    index = KnowledgeIndex(index_path(settings.data_dir))
    try:
        name = Path(args.name).name
        removed = index.remove(name)
    finally:
        index.close()
    print(removed_line(name, removed))
    return 0


def run_search(args: argparse.Namespace) -> int:
    """Print the best passages for a question."""
    from appliance.knowledge import Retriever, index_path  # numpy, onnxruntime: only here

    settings = _settings(args)
    retriever = Retriever(index_path(settings.data_dir))
    try:
        passages = retriever.search(args.query, args.k)
    finally:
        retriever.close()
    if args.json:
        print(json.dumps([p.to_json() for p in passages], ensure_ascii=False))
        return 0
    if not passages:
        print("no passage matches")
    floor = settings.knowledge.min_score
    for number, p in enumerate(passages, 1):
        page = f", p. {p.page}" if p.page is not None else ""
        below = "  below knowledge.min_score" if floor is not None and p.score < floor else ""
        print(f"{number}. {p.doc}{page}: {p.section}  (score {p.score:.3f}){below}")
        print(textwrap.indent(textwrap.shorten(p.text, 400, placeholder=" ..."), "   "))
    return 0


def run_reembed(args: argparse.Namespace) -> int:
    """Compute every passage's vector again with this version's embedding model."""
    from appliance.knowledge import index_path  # numpy, onnxruntime: only here
    from appliance.knowledge.index import reembed

    settings = _settings(args)
    progress = _Progress("index", sys.stderr) if sys.stderr.isatty() else None
    try:
        count = reembed(index_path(settings.data_dir), progress=progress)
    finally:
        if progress:
            progress.clear()
    print(f"{count} passages embedded again")
    return 0


def run_warm(args: argparse.Namespace) -> int:
    """Read every passage once with the configured model and keep its state on disk."""
    from appliance.catalog import resolve_llm
    from appliance.knowledge import Retriever, index_path  # numpy, onnxruntime: only here
    from appliance.llm import Engine
    from appliance.llm.kv_disk import passage_cache
    from appliance.service.knowledge_context import passage_text

    settings = _settings(args)
    if not settings.knowledge.enabled or not settings.knowledge.cache_mb:
        raise KnowledgeError("knowledge warm: set knowledge.enabled and a knowledge.cache_mb "
                             "above 0 first")
    model = resolve_llm(settings)
    disk = passage_cache(settings, model.path)
    assert disk is not None
    engine = Engine(settings.llm, model, disk)
    retriever = Retriever(index_path(settings.data_dir))
    warmed = 0
    try:
        for passage in retriever.passages():
            kept = len(list(disk.directory.glob("*.kv")))
            engine.cache_passage(passage_text(passage))
            if len(list(disk.directory.glob("*.kv"))) <= kept:
                break  # the budget is full: this state pushed out an older one
            warmed += 1
    finally:
        retriever.close()
        engine.close()
    print(f"{warmed} passage states kept in {disk.directory} "
          f"({disk.used_bytes / (1 << 20):.1f} of {settings.knowledge.cache_mb} MiB)")
    return 0
