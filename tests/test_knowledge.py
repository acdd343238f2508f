"""The knowledge index: readers, chunking, the FTS5 + embedding index, retrieval, the CLI.

Everything runs for real: the manuals in tests/manuals (one per format, the PDF made with
fpdf2 by tests/make_pump_pdf.py), the embedding model from its PyPI package, SQLite,
pypdf in its child process, and the ``appliance`` command's parser and handlers (in this
process: a fresh interpreter costs ~0.5 CPU-s a command; tests/test_harden_knowledge.py runs
``appliance knowledge add`` in one).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from appliance.cli import main as cli_main
from appliance.cli.knowledge import _Progress
from appliance.knowledge import chunking, formats
from appliance.knowledge.document import Document, Section
from appliance.knowledge.embedding import Embedder
from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.formats import asciidoc, html, markdown, pdf, rst, text
from appliance.knowledge.index import KnowledgeIndex
from appliance.knowledge.query import match_expression, terms
from appliance.knowledge.retriever import Retriever
from tests.conftest import smollm2_path
from tests.helpers import LazyModule, write_config

fpdf = LazyModule("fpdf")

MANUALS = Path(__file__).with_name("manuals")
QUESTIONS = yaml.safe_load(Path(__file__).with_name("knowledge_questions.yaml").read_text())
DOCUMENTS = sorted(MANUALS.iterdir())


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where :func:`embedder` keeps its rewritten graph."""
    return tmp_path_factory.mktemp("embedding")


@pytest.fixture(scope="module")
def embedder(graph_dir: Path) -> Embedder:
    """One embedding model for the in-process tests."""
    return Embedder(cache_dir=graph_dir)


@pytest.fixture(scope="module")
def graph(embedder: Embedder, graph_dir: Path) -> Path:
    """:func:`graph_dir` with the graph :func:`embedder` kept in it.

    Each command-line test starts from a link to it (the ``embedding/`` beside the
    index), as on a device after its first command: the rewrite then runs once per
    module, not once per test (tests/test_int8_graph.py covers the first time).
    """
    assert list(graph_dir.glob("*.onnx")), "the embedder kept no graph"
    return graph_dir


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory,
              embedder: Embedder) -> Iterator[Retriever]:
    """A retriever over an index of every test manual."""
    path = tmp_path_factory.mktemp("knowledge") / "knowledge.sqlite3"
    index = KnowledgeIndex(path, embedder)
    for doc in DOCUMENTS:
        index.add(doc, max_file_mb=50)
    index.close()
    r = Retriever(path, embedder)
    yield r
    r.close()


def _config(tmp_path: Path, knowledge: dict[str, Any] | None = None,
            graph: Path | None = None) -> Path:
    """A config with its data in ``tmp_path/data``; with ``graph``, the kept graph linked there."""
    if graph is not None:
        shutil.copytree(graph, tmp_path / "data" / "embedding", copy_function=os.link)
    return write_config(tmp_path / "config.yaml", {"knowledge": knowledge} if knowledge else {},
                        {"data_dir": tmp_path / "data", "llm": {"model_path": smollm2_path()}})


def _knowledge(cfg: Path, *args: str) -> tuple[int, str, str]:
    """``appliance --config CFG knowledge ARGS`` in this process: exit code, stdout, stderr.

    The same parser, handlers and exit codes as in a fresh interpreter (an argument
    argparse refuses exits with 2); what they print is caught here.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(["--config", str(cfg), "knowledge", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def _top(retriever: Retriever, question: str, k: int = 3) -> list[tuple[str, str]]:
    return [(p.doc, p.section) for p in retriever.search(question, k)]


# --- retrieval ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("question", "doc", "section"), [
    ("The screen shows nothing at all", "greenhouse.md",
     "Troubleshooting > The display is blank"),
    ("A ticket is stuck inside and the lid won't open", "kiosk-printer.adoc", "Paper jams"),
    ("Water drips from under the pump housing", "pump.pdf",
     "4 Maintenance > 4.2 Mechanical seal"),
    ("How do I protect the installation from thunderstorms?", "wind-turbine.html",
     "Lightning and grounding"),
    ("How do I remove calcium deposits from the machine?", "coffee-machine.rst", "Descaling"),
    ("Which sockets keep working during a blackout?", "ups.txt",
     "2. INSTALLATION > 2.2 Connecting the load"),
])
def test_a_paraphrased_question_finds_its_section(retriever: Retriever, question: str,
                                                  doc: str, section: str) -> None:
    assert (doc, section) in _top(retriever, question)


@pytest.mark.slow
def test_the_question_set_hits_the_right_section_in_the_top_3(retriever: Retriever) -> None:
    hits = sum((q["doc"], q["section"]) in _top(retriever, q["q"]) for q in QUESTIONS)
    assert len(QUESTIONS) >= 40
    assert hits / len(QUESTIONS) >= 0.85


@pytest.mark.slow
def test_exact_part_numbers_and_codes_are_found(retriever: Retriever) -> None:
    assert _top(retriever, "RBC-15", 1) == [
        ("ups.txt", "4. MAINTENANCE > 4.2 Replacing the battery")]
    assert ("wind-turbine.html", "Charge controller") in _top(retriever, "E07", 2)


@pytest.mark.slow
def test_query_syntax_never_reaches_fts5(retriever: Retriever) -> None:
    for question in ('wi-fi "unbalanced', "AND", "pump OR", "c++ 100% (pump", "a.b: it's",
                     'NEAR(pump seal) * ^ -', "   ", ""):
        passages = retriever.search(question, 3)
        assert len(passages) <= 3
    assert retriever.search("   ") == []
    assert terms("Wi-Fi: it's the PUMP's seal!") == ["wi", "fi", "pump", "seal"]
    assert match_expression(['say"hi']) == '"say""hi"'


@pytest.mark.slow
def test_min_score_leaves_out_weak_passages(retriever: Retriever) -> None:
    best = retriever.search("Water drips from under the pump housing", 5)
    assert [p.score for p in best] == sorted((p.score for p in best), reverse=True)
    floor = (best[0].score + best[-1].score) / 2
    kept = retriever.search("Water drips from under the pump housing", 5, min_score=floor)
    assert 0 < len(kept) < len(best)
    assert all(p.score >= floor for p in kept)


@pytest.mark.slow
def test_passages_carry_what_a_prompt_and_a_cache_need(retriever: Retriever) -> None:
    seal = retriever.search("mechanical seal leaking", 1)[0]
    assert seal.source == {"doc": "pump.pdf", "section": "4 Maintenance > 4.2 Mechanical seal",
                           "page": 4}
    assert seal.tokens == chunking.approx_tokens(seal.text)
    assert len(seal.hash) == 64
    listed = {p.hash: p for p in retriever.passages()}
    assert listed[seal.hash].text == seal.text
    assert len(listed) == len(list(retriever.passages()))  # every passage hashes apart
    text_doc = retriever.search("Which sockets keep working during a blackout?", 1)[0]
    assert "page" not in text_doc.source


@pytest.mark.slow
def test_the_hash_is_stable_across_indexes_and_changes_with_the_text(
        tmp_path: Path, embedder: Embedder, retriever: Retriever) -> None:
    index = KnowledgeIndex(tmp_path / "k.sqlite3", embedder)
    index.add(MANUALS / "ups.txt", max_file_mb=50)
    changed = tmp_path / "changed" / "ups.txt"
    changed.parent.mkdir()
    changed.write_text((MANUALS / "ups.txt").read_text().replace("RBC-15", "RBC-16"))
    again = Retriever(tmp_path / "k.sqlite3", embedder)
    before = {p.hash for p in again.passages()}
    assert before == {p.hash for p in retriever.passages() if p.doc == "ups.txt"}
    index.add(changed, max_file_mb=50)
    after = {p.hash for p in again.passages()}
    assert len(before - after) == 1 and len(after - before) == 1
    index.close()
    again.close()


@pytest.mark.slow
def test_a_retriever_sees_manuals_added_while_it_is_open(tmp_path: Path,
                                                         embedder: Embedder) -> None:
    index = KnowledgeIndex(tmp_path / "k.sqlite3", embedder)
    index.add(MANUALS / "ups.txt", max_file_mb=50)
    r = Retriever(tmp_path / "k.sqlite3", embedder)
    assert {p.doc for p in r.search("How do I bring the blades to a halt?", 3)} == {"ups.txt"}
    index.add(MANUALS / "wind-turbine.html", max_file_mb=50)
    assert ("wind-turbine.html", "Operation > Stopping the turbine") in _top(
        r, "How do I bring the blades to a halt?")
    index.remove("wind-turbine.html")
    assert {p.doc for p in r.search("How do I bring the blades to a halt?", 3)} == {"ups.txt"}
    index.close()
    r.close()


@pytest.mark.slow
def test_batched_embeddings_equal_single_ones(embedder: Embedder) -> None:
    texts = ["short", "a much longer sentence about the pump and its mechanical seal leaking",
             "Ümlaut café naïve — déjà vu", "x" * 500]
    batch = embedder.embed(texts)
    for t, row in zip(texts, batch, strict=True):
        assert np.allclose(embedder.embed_one(t), row, atol=1e-4)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


# --- readers and chunking --------------------------------------------------------------

def _paths(doc: Document) -> list[str]:
    return [s.title for s in doc.sections]


def test_each_format_gives_its_title_and_section_paths() -> None:
    docs = {p.name: formats.read(formats.format_of(p), p.read_bytes()) for p in DOCUMENTS}
    assert docs["greenhouse.md"].title == "GH-400 Greenhouse Climate Controller"
    assert "Maintenance > Cleaning the air intake filters" in _paths(docs["greenhouse.md"])
    assert docs["kiosk-printer.adoc"].title == "KP-80 Kiosk Receipt Printer: Service Guide"
    assert "Print quality > Print density" in _paths(docs["kiosk-printer.adoc"])
    assert docs["coffee-machine.rst"].title == "Barista B2 Bean-to-Cup Coffee Machine"
    assert "Daily care > Milk system" in _paths(docs["coffee-machine.rst"])
    assert docs["ups.txt"].title == "POWERSAFE 1500 UNINTERRUPTIBLE POWER SUPPLY"
    assert "4. MAINTENANCE > 4.2 Replacing the battery" in _paths(docs["ups.txt"])
    assert docs["wind-turbine.html"].title == "WT-3 Small Wind Turbine: Owner's Manual"
    assert "Maintenance > Bolts and yaw bearing" in _paths(docs["wind-turbine.html"])
    every = " ".join(p for d in docs.values() for s in d.sections for p in s.paragraphs)
    for markup in ("analytics", "Privacy", "<<", ":toc:", "``", "**", "](", "&nbsp;"):
        assert markup not in every


def test_pdf_sections_come_from_the_outline_with_their_pages() -> None:
    doc = pdf.read((MANUALS / "pump.pdf").read_bytes())
    assert doc.pages == 6
    assert doc.title == "AquaMax CP-750 Centrifugal Pump: Installation and Service Manual"
    pages = {s.title: s.page for s in doc.sections}
    assert pages["1 Safety"] == 1
    assert pages["2 Installation > 2.3 Priming"] == 2
    assert pages["4 Maintenance > 4.2 Mechanical seal"] == 4
    assert pages["6 Technical data"] == 6
    priming = next(s for s in doc.sections if s.title.endswith("Priming"))
    assert priming.paragraphs[0].startswith("The pump must be filled with water")


def test_pdf_without_outline_uses_numbered_headings_and_the_page_cap(tmp_path: Path) -> None:
    made = fpdf.FPDF()
    for page in ("1 Safety\nKeep hands away from the fan.",
                 "2 Care\n2.1 Oiling\nOil the hinge every month.\n2.2 Storage\nKeep it dry."):
        made.add_page()
        made.set_font("Helvetica", size=12)
        made.multi_cell(0, 8, page)
    made.output(str(tmp_path / "plain.pdf"))
    doc = pdf.read((tmp_path / "plain.pdf").read_bytes())
    assert [(s.title, s.page) for s in doc.sections] == [
        ("1 Safety", 1), ("2 Care > 2.1 Oiling", 2), ("2 Care > 2.2 Storage", 2)]
    with pytest.raises(KnowledgeError, match="2 pages is over the limit of 1"):
        pdf.read((tmp_path / "plain.pdf").read_bytes(), max_pages=1)


def test_the_committed_pump_pdf_is_what_its_script_writes(tmp_path: Path) -> None:
    from tests.make_pump_pdf import build

    assert build(tmp_path / "pump.pdf").read_bytes() == (MANUALS / "pump.pdf").read_bytes()


def test_markdown_code_fences_setext_headings_and_inline_markup() -> None:
    doc = markdown.read("Title\n=====\n\nIntro with a [link](http://x) and **bold**.\n\n"
                        "Setup\n-----\n\n```\n# not a heading\n```\n\n### Deep\n\n| a | b |\n"
                        "|---|---|\n| 1 | 2 |\n")
    assert doc.title == "Title"
    assert [(s.title, s.paragraphs) for s in doc.sections] == [
        ("", ("Intro with a link and bold.",)),
        ("Setup", ("# not a heading",)),
        ("Setup > Deep", ("| a | b\n| 1 | 2",))]


def test_rst_levels_follow_the_order_of_adornments() -> None:
    doc = rst.read("Guide\n#####\n\nPart\n****\n\nChapter\n=======\n\nText with ``code`` and "
                   "`a link <http://x>`_.\n\n.. image:: x.png\n   :alt: skipped\n\n"
                   "Other part\n**********\n\n.. note::\n\n   Kept note.\n")
    assert doc.title == "Guide"
    assert [(s.title, s.paragraphs) for s in doc.sections] == [
        ("Part > Chapter", ("Text with code and a link.",)),
        ("Other part", ("Kept note.",))]


def test_asciidoc_header_blocks_and_lists() -> None:
    doc = asciidoc.read("= Manual\nAuthor Name\n:toc:\n\n== Use\n\n[source,sh]\n----\nrun it\n"
                        "----\n\n. First step\n. Second step\n\n// a comment\n=== Deeper\n\n"
                        "See <<Use>> and *this*.\n")
    assert doc.title == "Manual"
    assert [(s.title, s.paragraphs) for s in doc.sections] == [
        ("Use", ("run it", ". First step\n. Second step")),
        ("Use > Deeper", ("See Use and this.",))]


def test_plain_text_headings_are_numbered_capitals_or_underlined() -> None:
    doc = text.read("Widget manual\n\nIntro line.\n\nSAFETY\n\nBe careful.\n\n2.1 Details\n\n"
                    "Some details.\n\nNotes\n-----\nA note.\n\n1. not a heading, it has a comma.\n")
    assert doc.title == "Widget manual"
    assert [s.title for s in doc.sections] == ["", "SAFETY", "SAFETY > 2.1 Details",
                                               "SAFETY > Notes"]


def test_html_skips_page_furniture() -> None:
    doc = html.read("<html><head><title>T</title><script>x()</script></head><body><nav>Menu"
                    "</nav><h1>Only</h1><p>A<br>B</p><ul><li>one</li><li>two</li></ul>"
                    "<h2>Sub</h2><table><tr><td>k</td><td>v</td></tr></table>"
                    "<footer>(c)</footer></body></html>")
    assert doc.title == "T"
    assert [(s.title, s.paragraphs) for s in doc.sections] == [
        ("", ("A\nB", "- one\n- two")), ("Sub", ("k | v",))]


def test_long_sections_are_cut_between_paragraphs_into_even_chunks() -> None:
    paragraphs = tuple(" ".join(f"word{i}_{j}" for j in range(40)) for i in range(30))
    long_sentence = " ".join(["Sentence goes on and on."] * 120)
    doc = Document("D", (Section(("A",), paragraphs), Section(("B",), (long_sentence,)),
                         Section(("C",), ("Short.",))))
    chunks = chunking.chunk(doc)
    a = [c for c in chunks if c.section == "A"]
    assert len(a) >= 2 and all(150 <= c.tokens <= 300 for c in a)
    assert sum(len(c.text.split()) for c in a) == 30 * 40
    assert all(c.tokens <= 300 for c in chunks if c.section == "B")
    assert [c.text for c in chunks if c.section == "C"] == ["Short."]


# --- the command line -----------------------------------------------------------------

def _aes_pdf() -> bytes:
    """A PDF encrypted with AES-256 (revision 6), with a password nobody knows.

    pypdf reads AES with the ``cryptography`` package (a dependency, for signed
    catalogs); without it, it raised DependencyError, not one of its PdfReadErrors.
    """
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 5 /R 6 /Length 256 /P -4 /O <" + b"11" * 48 + b"> /U <"
        + b"22" * 48 + b"> /OE <" + b"33" * 32 + b"> /UE <" + b"44" * 32 + b"> /Perms <"
        + b"55" * 16 + b"> /CF << /StdCF << /CFM /AESV3 /AuthEvent /DocOpen /Length 32 >> >>"
        b" /StmF /StdCF /StrF /StdCF >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s><%s>] >>\n" % (
        len(objects) + 1, b"ab" * 16, b"ab" * 16)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def _password_pdf(path: Path) -> None:
    made = fpdf.FPDF()
    made.add_page()
    made.set_font("Helvetica", size=12)
    made.cell(text="A secret pump manual")
    made.set_encryption(owner_password="owner", user_password="user",
                        encryption_method=fpdf.enums.EncryptionMethod.RC4)
    made.output(str(path))


@pytest.mark.slow
def test_bad_inputs_get_one_line_each_and_the_rest_goes_in(tmp_path: Path, graph: Path) -> None:
    cfg = _config(tmp_path, {"max_file_mb": 0.01}, graph)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 8)
    _password_pdf(bad / "locked.pdf")
    (bad / "aes.pdf").write_bytes(_aes_pdf())
    (bad / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (bad / "empty.md").write_text("  \n\n")
    (bad / "huge.md").write_text("# Big\n\n" + "word " * 5000)
    (bad / "letter.docx").write_text("not a format we read")
    (bad / "folder").mkdir()
    good = [MANUALS / "ups.txt", MANUALS / "wind-turbine.html", MANUALS / "coffee-machine.rst"]
    batch = [good[0], *sorted(p for p in bad.iterdir()), good[1], bad / "missing.md", good[2]]
    code, out, err = _knowledge(cfg, "add", *map(str, batch))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 9, err
    expected = {"broken.pdf": "not a readable PDF", "locked.pdf": "encrypted with a password",
                "aes.pdf": "encrypted with a password", "blob.txt": "binary data",
                "empty.md": "empty file", "huge.md": "over knowledge.max_file_mb",
                "letter.docx": "unknown format", "folder": "is a directory",
                "missing.md": "no such file"}
    for name, problem in expected.items():
        line = next(line for line in lines if f"{name}:" in line)
        assert line.startswith("appliance: ") and problem in line, line
    assert "Traceback" not in err
    assert out.splitlines() == [f"{p.name}: added, {n} passages" for p, n in
                                zip(good, (12, 8, 8), strict=True)]
    code, out, _ = _knowledge(cfg, "list", "--json")
    assert sorted(d["name"] for d in json.loads(out)) == sorted(p.name for p in good)


@pytest.mark.slow
def test_re_adding_is_a_no_op_and_a_changed_file_replaces_its_chunks(tmp_path: Path,
                                                                     graph: Path) -> None:
    cfg = _config(tmp_path, graph=graph)
    manual = tmp_path / "greenhouse.md"
    shutil.copy(MANUALS / "greenhouse.md", manual)
    assert _knowledge(cfg, "add", str(manual))[:2] == (0, "greenhouse.md: added, 15 passages\n")
    assert _knowledge(cfg, "add", str(manual))[:2] == (
        0, "greenhouse.md: unchanged (15 passages)\n")
    manual.write_text(manual.read_text().replace(
        "### The display is blank", "### The buzzer sounds at night\n\nThe buzzer means the "
        "frost alarm. Close the door and check the heater.\n\n### The display is blank"
    ).replace("Take them out every\nmonth", "Take them out every\nweek"))
    code, out, err = _knowledge(cfg, "add", str(manual))
    assert (code, out, err) == (0, "greenhouse.md: replaced, 16 passages\n", "")
    code, out, _ = _knowledge(cfg, "search", "noise from the alarm sounder at night", "--json")
    assert json.loads(out)[0]["section"] == "Troubleshooting > The buzzer sounds at night"
    code, out, _ = _knowledge(cfg, "search", "How do I wash the foam pads under the unit?",
                              "--json", "--k", "20")
    texts = [p["text"] for p in json.loads(out)]
    assert any("every week" in t for t in texts)
    assert not any("every month" in t for t in texts)
    assert len(texts) == 16
    code, out, _ = _knowledge(cfg, "list", "--json")
    assert [(d["name"], d["passages"]) for d in json.loads(out)] == [("greenhouse.md", 16)]


@pytest.mark.slow
def test_search_json_shape_and_remove(tmp_path: Path, graph: Path) -> None:
    cfg = _config(tmp_path, graph=graph)
    code, _out, err = _knowledge(cfg, "add", str(MANUALS / "pump.pdf"),
                                 str(MANUALS / "kiosk-printer.adoc"))
    assert code == 0, err
    code, out, _ = _knowledge(cfg, "search", "Water drips from under the pump housing",
                              "--json", "--k", "2")
    results = json.loads(out)
    assert len(results) == 2
    assert set(results[0]) == {"doc", "section", "page", "score", "text"}
    assert results[0]["doc"] == "pump.pdf" and isinstance(results[0]["page"], int)
    code, out, _ = _knowledge(cfg, "search", "a paper reel", "--json", "--k", "1")
    assert set(json.loads(out)[0]) == {"doc", "section", "score", "text"}
    code, out, _ = _knowledge(cfg, "search", "the pump's mechanical seal")
    assert code == 0 and out.startswith("1. pump.pdf, p. 4: 4 Maintenance > 4.2 Mechanical seal")
    assert _knowledge(cfg, "remove", "pump.pdf")[:2] == (0, "pump.pdf: removed (13 passages)\n")
    code, out, _ = _knowledge(cfg, "search", "the pump's mechanical seal", "--json", "--k", "20")
    assert {p["doc"] for p in json.loads(out)} == {"kiosk-printer.adoc"}
    code, out, err = _knowledge(cfg, "remove", "pump.pdf")
    assert code == 1 and err.count("\n") == 1 and "pump.pdf: no manual of that name" in err
    code, _out, err = _knowledge(cfg, "search", "x", "--k", "0")
    assert code == 2 and "--k" in err


@pytest.mark.slow
def test_an_index_of_another_embedding_model_is_embedded_again(tmp_path: Path,
                                                               graph: Path) -> None:
    cfg = _config(tmp_path, graph=graph)
    assert _knowledge(cfg, "add", str(MANUALS / "pump.pdf"))[0] == 0
    path = tmp_path / "data" / "knowledge.sqlite3"
    with sqlite3.connect(path) as db:
        vectors = dict(db.execute("SELECT id, vector FROM chunks"))
        # As an older version left it: another model's name, and vectors unlike ours.
        db.execute("UPDATE meta SET value = 'an-older-model' WHERE key = 'embedder'")
        db.execute("UPDATE chunks SET vector = zeroblob(length(vector))")
    code, _out, err = _knowledge(cfg, "search", "the pump's mechanical seal")
    assert code == 1 and err.count("\n") == 1
    assert "vectors are of an-older-model" in err and "appliance knowledge reembed" in err
    assert _knowledge(cfg, "reembed")[:2] == (0, "13 passages embedded again\n")
    with sqlite3.connect(path) as db:
        assert dict(db.execute("SELECT id, vector FROM chunks")) == vectors
    code, out, _ = _knowledge(cfg, "search", "the pump's mechanical seal")
    assert code == 0 and out.startswith("1. pump.pdf, p. 4: 4 Maintenance > 4.2 Mechanical seal")


@pytest.mark.slow
def test_search_before_any_add_says_what_to_do(tmp_path: Path) -> None:
    code, _out, err = _knowledge(_config(tmp_path), "search", "anything")
    assert code == 1 and "appliance knowledge add" in err and err.count("\n") == 1
    assert _knowledge(_config(tmp_path), "list")[1].startswith("no manuals indexed")


def test_progress_is_one_line_rewritten_in_place() -> None:
    stream = io.StringIO()
    progress = _Progress("big.pdf", stream)
    progress("pages", 1, 5)          # small documents show nothing
    assert stream.getvalue() == ""
    progress("pages", 3, 40)
    progress("passages", 32, 200)
    progress.clear()
    assert stream.getvalue() == ("\rbig.pdf: reading page 3/40\x1b[K"
                                 "\rbig.pdf: embedding passage 32/200\x1b[K\r\x1b[K")
