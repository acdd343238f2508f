"""Whether a short reply is a yes or a no (to "Shall I ...?" asked in a conversation).

Only a reply that is nothing but a yes or a no counts: "yes" and "yes please"
do; "yes, and what is the time?" does not (it is a new question).

>>> yes_or_no("Yes, please."), yes_or_no("nope"), yes_or_no("yes and also the fan")
(True, False, None)
"""

from __future__ import annotations

import re

YES = frozenset({"yes", "yeah", "yep", "sure", "ok", "okay", "yes please", "please do",
                 "do it", "go ahead", "sure please", "ok please", "okay please"})
NO = frozenset({"no", "nope", "no thanks", "no thank you", "don't", "do not", "cancel",
                "stop", "never mind"})


def yes_or_no(text: str) -> bool | None:
    """``True`` for a yes, ``False`` for a no, ``None`` for anything else."""
    said = " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())
    if said in YES:
        return True
    if said in NO:
        return False
    return None
