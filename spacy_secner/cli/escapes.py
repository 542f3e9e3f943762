"""Text from the inputs as people read it (CSV cells, the HTML page, the run's messages): with
the characters that hide or rewrite what is around them written as escapes."""

import re
from bisect import bisect_left
from typing import Callable, List, Tuple

# Characters that change how the text around them is shown, not what it says: C0 and C1 control
# characters (but tab and newline) and the bidirectional formatting marks, with which an
# attacker's "invoice\u202efdp.exe" shows as "invoiceexe.pdf" and an escape sequence rewrites a
# terminal. What people read (CSV, HTML, the run's messages) shows them as escapes.
HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with the characters of `HIDDEN` written as Python escapes (`\\u202e`,
    `\\x1b`)."""
    return HIDDEN.sub(_escape, text)


def visible_with_offsets(text: str) -> Tuple[str, Callable[[int], int]]:
    """`visible(text)`, and a function that moves a character offset into `text` to the same
    place in it."""
    starts: List[int] = []
    grown: List[int] = []
    pieces: List[str] = []
    last = 0
    for match in HIDDEN.finditer(text):
        escaped = _escape(match)
        pieces += [text[last : match.start()], escaped]
        last = match.end()
        starts.append(match.start())
        grown.append((grown[-1] if grown else 0) + len(escaped) - 1)
    pieces.append(text[last:])

    def moved(offset: int) -> int:
        before = bisect_left(starts, offset)  # escapes that start before the offset
        return offset + (grown[before - 1] if before else 0)

    return "".join(pieces), moved


def _escape(match: "re.Match[str]") -> str:
    return match.group().encode("unicode_escape").decode("ascii")
