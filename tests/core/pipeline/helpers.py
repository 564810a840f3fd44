"""Test data for the web pipeline: English articles, HTML pages and WARC files written here."""

from __future__ import annotations

import io
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tests.support.data import SHARED_DATA

SHARED = SHARED_DATA
WARC_DIR = SHARED / "web" / "warc"
URL_LISTS = SHARED / "url_filter"

_SUBJECTS = [
    "The village council",
    "A local farmer",
    "The old library",
    "Our science teacher",
    "The river authority",
    "A young engineer",
    "The city museum",
    "The hospital board",
    "A retired sailor",
    "The football club",
    "The school choir",
    "A small bakery",
]
_VERBS = [
    "announced",
    "described",
    "explained",
    "questioned",
    "celebrated",
    "reviewed",
    "postponed",
    "defended",
    "criticised",
    "welcomed",
    "measured",
    "photographed",
]
_OBJECTS = [
    "the new bridge",
    "a plan for the harbour",
    "the results of the harvest",
    "the history of the valley",
    "a study of local birds",
    "the cost of the repairs",
    "the winter festival",
    "a proposal for cycle lanes",
    "the damage from the storm",
    "the future of the market",
    "an exhibition of maps",
    "the rules for parking",
]
_ENDINGS = [
    "after a long meeting on Tuesday",
    "with the help of several volunteers",
    "because the budget had changed",
    "in front of a large crowd",
    "despite the heavy rain that week",
    "to the surprise of many residents",
    "before the end of the season",
    "and promised to publish the details",
    "while the mayor was away",
    "with support from the regional government",
]


def article(seed: int, sentences: int = 10) -> str:
    """An English article that passes every quality filter; different seeds share few phrases."""
    rng = random.Random(seed)
    parts = [rng.sample(words, sentences) for words in (_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)]
    lines = [f"{s} {v} {o} {e}." for s, v, o, e in zip(*parts, strict=True)]
    # two sentences per paragraph
    return "\n\n".join(" ".join(lines[i : i + 2]) for i in range(0, len(lines), 2))


def page(body: str, title: str = "News", lang: str = "en") -> str:
    """An HTML page: navigation and footer around an article made of the body's paragraphs."""
    paragraphs = "".join(f"<p>{p}</p>\n" for p in body.split("\n\n"))
    return (
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>'
        "</head><body><nav><a href='/'>Home</a> | <a href='/about'>About</a> | "
        "<a href='/contact'>Contact</a></nav>"
        f"<article><h1>{title}</h1>\n{paragraphs}</article>"
        "<footer>Copyright 2024 Example News. All rights reserved.</footer></body></html>"
    )


@dataclass
class Record:
    """A WARC response; ``payload_type`` None leaves out WARC-Identified-Payload-Type."""

    url: str
    payload: bytes
    content_type: str = "text/html; charset=utf-8"
    payload_type: str | None = "text/html"
    record_type: str = "response"
    extra_headers: dict[str, str] = field(default_factory=dict)


def html_record(url: str, html: str, **kwargs: object) -> Record:
    return Record(url, html.encode("utf-8"), **kwargs)  # type: ignore[arg-type]


def write_warc(path: Path, records: Iterable[Record], *, gzip: bool = True) -> Path:
    """A WARC file with a warcinfo record, then for each response its request record first."""
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=gzip)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "orchard-tests"}))
        for rec in records:
            if rec.record_type == "conversion":
                headers = {"WARC-Identified-Payload-Type": "text/plain"} if rec.payload_type else {}
                writer.write_record(
                    writer.create_warc_record(
                        rec.url,
                        "conversion",
                        payload=io.BytesIO(rec.payload),
                        warc_content_type="text/plain",
                        warc_headers_dict=headers,
                    )
                )
                continue
            request = StatusAndHeaders(
                "GET / HTTP/1.1", [("Host", "example")], is_http_request=True
            )
            writer.write_record(writer.create_warc_record(rec.url, "request", http_headers=request))
            http = StatusAndHeaders(
                "200 OK",
                [("Content-Type", rec.content_type), *rec.extra_headers.items()],
                protocol="HTTP/1.1",
            )
            warc_headers = (
                {"WARC-Identified-Payload-Type": rec.payload_type} if rec.payload_type else {}
            )
            writer.write_record(
                writer.create_warc_record(
                    rec.url,
                    "response",
                    payload=io.BytesIO(rec.payload),
                    http_headers=http,
                    warc_headers_dict=warc_headers,
                )
            )
    return path
