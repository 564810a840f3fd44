"""Markdown for guidelines and turn previews, made safe to show.

Anything a labeler, trainer or model wrote is rendered by Python-Markdown and then cleaned by nh3
(an allowlist of tags and attributes, links forced to ``rel="noopener noreferrer nofollow"``), so
no text ever runs as script; the page's Content-Security-Policy is the second wall behind it.
"""

from __future__ import annotations

import markdown
import nh3
from django.utils.safestring import SafeString, mark_safe

ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td", "th",
    "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}, "th": {"align"}, "td": {"align"}}
MAX_MARKDOWN_CHARS = 200_000


def render_markdown(text: str) -> SafeString:
    html = markdown.markdown(
        text[:MAX_MARKDOWN_CHARS], extensions=["fenced_code", "tables", "sane_lists"]
    )
    cleaned = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(cleaned)  # noqa: S308 (cleaned by nh3 just above)
