"""Untrusted text in markdown (peerlens.markdown): rendered as GitHub-flavoured markdown with raw HTML allowed (as
the Dagster UI renders metadata), a hostile description yields its own text and no element, link or image."""

import re
from html import unescape

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from peerlens.markdown import markdown_frame, markdown_text

HOSTILE = [
    "<script>alert('x')</script>",
    '<img src=x onerror="alert(1)">',
    "[click me](javascript:alert(1)) and ![pixel](https://tracker.example/p.png)",
    "<a href='https://phish.example'>login</a> visit https://phish.example or www.phish.example",
    "write to jane.roe@example.com or mailto:jane.roe@example.com",
    "**bold** _em_ `code` ~~gone~~ # heading | cell | break",
    "line one\n\n- a list\n1. numbered\n> quoted",
    "&lt;already escaped&gt; & back\\slash",
]


def render(markdown: str) -> str:
    # Bare URLs (GFM autolinks) are not in markdown-it without linkify-it-py: the browser test checks them.
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)


def visible_text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", "", html)).strip()


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_renders_as_itself_and_as_nothing_else(text):
    html = render(markdown_text(text))
    # One paragraph and no element of the text's own; what would become a link by itself is shown as code.
    assert set(re.findall(r"<(\w+)", html)) <= {"p", "code"} and html.count("<p>") == 1, html
    for code in map(unescape, re.findall(r"<code>(.*?)</code>", html)):
        assert code in text and " " not in code and re.search(r"://|www\.|@", code), html
    assert visible_text(html) == " ".join(text.split())


def test_a_frame_keeps_its_table_and_its_numbers_and_shows_text_cells_as_text():
    frame = pd.DataFrame({"ticker": ["A|B", "C"], "name": ["<b>Acme</b>", "[x](javascript:y)"], "share": [0.5, 0.25]})
    html = render(markdown_frame(frame).to_markdown(index=False))
    assert html.count("<tr>") == 3 and "<b>" not in html and "<a" not in html
    assert "A|B" in visible_text(html) and "&lt;b&gt;Acme&lt;/b&gt;" in html and "0.25" in html
