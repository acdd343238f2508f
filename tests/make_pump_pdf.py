"""Write ``manuals/pump.pdf``, the AquaMax CP-750 pump manual, with fpdf2 (a test dependency).

The PDF has an outline (bookmarks) for its sections and one chapter per page or more, so the
readers' section paths and page numbers can be checked. Run it after changing the text:
``python tests/make_pump_pdf.py`` (the output is byte-for-byte reproducible).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from fpdf import FPDF

TITLE = "AquaMax CP-750 Centrifugal Pump: Installation and Service Manual"

# (chapter, [(section or None, [paragraphs])]); each chapter starts on a new page.
CHAPTERS: list[tuple[str, list[tuple[str | None, list[str]]]]] = [
    ("1 Safety", [
        (None, [
            "Read this manual before you install the pump. The CP-750 is a surface pump for "
            "clean water at up to 40 degrees Celsius, for garden irrigation, rainwater tanks "
            "and pressure boosting in houses.",
            "Always disconnect the pump from the mains before any work on it, and make sure "
            "that nobody can switch it on again while you work. The motor casing can become "
            "hot enough to burn you during long runs.",
            "Never pump petrol, solvents, sea water or any liquid containing sand: they "
            "destroy the impeller and the mechanical seal, and the warranty does not cover "
            "that damage.",
        ]),
    ]),
    ("2 Installation", [
        ("2.1 Placing the pump", [
            "Set the pump on a firm, level base, as close to the water source as possible and "
            "no more than 7 metres above the water surface. Every metre of suction height "
            "costs delivery. Protect the pump from rain and from frost, and leave room around "
            "the motor fan for cooling air.",
        ]),
        ("2.2 Suction pipe", [
            "Use a rigid suction hose of at least 1 inch, with a foot valve and strainer at "
            "its lower end. Lay the pipe so that it rises steadily towards the pump, without "
            "loops or high points where air can collect. Seal every thread with PTFE tape: a "
            "single leak on the suction side lets air in and the pump stops delivering.",
        ]),
        ("2.3 Priming", [
            "The pump must be filled with water before the first start and after it has run "
            "dry. Unscrew the filler plug on top of the pump body and pour in water until it "
            "overflows, which takes about two litres. Screw the plug back in by hand. "
            "Open a tap on the delivery side, then start the pump: it draws the air out of "
            "the suction pipe within three minutes. If no water comes, stop the pump and fill "
            "it again.",
        ]),
    ]),
    ("3 Operation", [
        ("3.1 Pressure switch", [
            "The built-in pressure switch starts the pump when the pressure falls below "
            "1.5 bar and stops it at 3.0 bar. To change the cut-in pressure, remove the switch "
            "cover and turn the large nut: clockwise raises it, anticlockwise lowers it. Keep "
            "the air pressure of the pressure tank at 0.2 bar below the cut-in pressure.",
        ]),
        ("3.2 Dry-run protection", [
            "If the pump runs for 30 seconds without water, the dry-run protection switches "
            "it off and the red lamp lights. Check the water level and the suction pipe, then "
            "press RESET. The pump tries again by itself every 30 minutes, up to four times.",
        ]),
    ]),
    ("4 Maintenance", [
        ("4.1 Strainer", [
            "Clean the strainer of the foot valve and the prefilter every month in the "
            "irrigation season. Leaves and silt on the strainer lower the delivery and can "
            "make the pump run dry.",
        ]),
        ("4.2 Mechanical seal", [
            "The mechanical seal keeps water from leaving along the motor shaft. A few drops "
            "an hour during the first days are normal while the seal faces bed in. A steady "
            "leak below the pump body means the seal is worn and must be replaced with seal "
            "kit MS-750; running the pump with a leaking seal lets water reach the motor "
            "bearings.",
        ]),
        ("4.3 Winter storage", [
            "Where frost is possible, drain the pump before winter: open the drain plug at the "
            "bottom of the pump body and the filler plug, let all the water run out, and store "
            "the pump in a dry room. Water left inside freezes and cracks the pump body.",
        ]),
    ]),
    ("5 Troubleshooting", [
        ("5.1 The motor hums but does not turn", [
            "The impeller is blocked by dirt, or the shaft is stuck after a long standstill. "
            "Disconnect the mains, remove the fan cover and turn the shaft by hand with a "
            "screwdriver in the slot at its end until it turns freely. If the motor still only "
            "hums, the start capacitor has failed.",
        ]),
        ("5.2 Rattling noise", [
            "A rattling or crackling sound, as if gravel were passing through the pump, is "
            "cavitation: the pump cannot draw enough water. Shorten the suction pipe, lower "
            "the suction height or use a wider hose, and check that the strainer is clean.",
        ]),
        ("5.3 The pump starts and stops all the time", [
            "Frequent short cycles wear the motor and the pressure switch. Usually the "
            "pressure tank has lost its air charge: check it with a tyre gauge while the "
            "pump is off and the system has no pressure, and refill it with a bicycle pump.",
        ]),
    ]),
    ("6 Technical data", [
        (None, [
            "Motor power 750 W, 230 V, 50 Hz. Maximum delivery 3,600 litres per hour. "
            "Maximum head 45 metres. Maximum suction height 7 metres. Connections 1 inch "
            "female thread. Protection class IPX4. Weight 9.5 kg.",
        ]),
    ]),
]


def build(path: Path) -> Path:
    """Write the manual to ``path``; the same text always gives the same bytes."""
    pdf = FPDF(format="A4")
    pdf.set_creation_date(datetime(2024, 1, 1, tzinfo=UTC))
    pdf.set_title(TITLE)
    pdf.set_author("AquaMax Pumps")
    pdf.set_auto_page_break(auto=True, margin=20)
    for chapter, sections in CHAPTERS:
        pdf.add_page()
        pdf.start_section(chapter, level=0)
        pdf.set_font("Helvetica", "B", 16)
        pdf.multi_cell(0, 10, chapter, new_x="LMARGIN", new_y="NEXT")
        for section, paragraphs in sections:
            if section:
                pdf.start_section(section, level=1)
                pdf.set_font("Helvetica", "B", 13)
                pdf.ln(3)
                pdf.multi_cell(0, 8, section, new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("Helvetica", "", 11)
            for paragraph in paragraphs:
                pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
                pdf.ln(3)
    pdf.output(str(path))
    return path


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "manuals/pump.pdf"))
