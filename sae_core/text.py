"""What counts as text: the one rule for an empty or missing description, wherever a text is read.

A description is *blank* when a reader would see nothing in it: every character is whitespace, a
control or format character, or a separator (Unicode categories C* and Z*), e.g. a zero-width space
(U+200B), a byte-order mark (U+FEFF) or a soft hyphen (U+00AD). `str.strip` removes none of
those, so a text made only of them would reach the language model as a few tokens of nothing
and become a feature vector that means nothing. Markup counts as nothing a reader sees: a text
made only of HTML tags, comments and entities of such characters (`<p>&nbsp;</p>`) is blank too,
while markup around words is kept as the source wrote it. A missing value (None, NaN, any
non-string) is not a text at all.
"""

from __future__ import annotations

import html
import re
import unicodedata

_MARKUP = re.compile(r"<!--.*?-->|</?[A-Za-z][^<>]*>", re.DOTALL)
"""An HTML comment or tag (a '<' that opens no tag, as in "a < b" or "<3", is text)."""


def is_blank(text: str) -> bool:
    """True when `text` holds no visible character outside markup (see the module docstring)."""
    shown = html.unescape(_MARKUP.sub("", text)) if "<" in text or "&" in text else text
    return all(char.isspace() or unicodedata.category(char)[0] in "CZ" for char in shown)


def checked_text(text: object, label: str) -> str:
    """`text` itself when it is a string with something visible in it; else a ValueError naming `label`
    (e.g. "company 'AMZN'") and what is wrong: missing (NaN/None/not a string) or blank."""
    if not isinstance(text, str):
        raise ValueError(f"{label}: the description is missing ({text!r} is not a text)")
    if is_blank(text):
        raise ValueError(f"{label}: the description is empty (nothing but whitespace, invisible characters or markup)")
    return text
