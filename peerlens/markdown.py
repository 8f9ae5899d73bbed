"""Untrusted text in markdown: descriptions, names and the tokens read from them, shown as text and nothing else.

A company's description is whatever its source says; the Dagster UI renders asset metadata as markdown
(GitHub-flavoured, with raw HTML). `markdown_text` makes a value inert there: HTML's special characters become
entities, markdown's punctuation is backslash-escaped (no link, image, emphasis, code span or table cell
break), what the renderer would make a link of by itself (a bare URL, www.…, an e-mail address) is put in a
code span, and whitespace collapses to one line. The rendered text reads as the value did.
"""

from __future__ import annotations

import re

import pandas as pd

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_ESCAPED = set("\\`*_{}[]()#+-!|~:.=")
_LINKABLE = re.compile(r"(?:\b(?:https?://|ftp://|mailto:|xmpp:|www\.)|[\w.+-]+@[\w-]+\.[\w-])[^\s`|]*", re.IGNORECASE)
"""What GitHub-flavoured markdown turns into a link on its own (a URL, www.…, an e-mail address), escaped or
not: the UI's renderer finds them in the text after escapes are read, so they are shown as code instead."""


def markdown_text(value: object) -> str:
    """`value` as inert one-line markdown: e.g. '<b>[x](javascript:y)</b>' renders as that text, not as markup,
    and 'https://x.example' as that text in a code span, not as a link."""
    text = " ".join(str(value).split())
    pieces, start = [], 0
    for link in _LINKABLE.finditer(text):
        pieces += [_escaped(text[start:link.start()]), f"`{link.group()}`"]
        start = link.end()
    return "".join([*pieces, _escaped(text[start:])])


def _escaped(text: str) -> str:
    return "".join(_ENTITIES.get(c) or (f"\\{c}" if c in _ESCAPED else c) for c in text)


def markdown_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell through `markdown_text` (numbers, dates and missing values as they were),
    ready for `DataFrame.to_markdown`."""
    inert = frame.copy()
    for column in inert.columns:
        if inert[column].dtype == object or pd.api.types.is_string_dtype(inert[column]):
            inert[column] = inert[column].map(lambda v: markdown_text(v) if isinstance(v, str) else v)
    inert.columns = [markdown_text(column) for column in inert.columns]
    return inert
