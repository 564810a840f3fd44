"""PII masking: e-mails and public IPv4 addresses replaced; private ranges kept; phones opt-in."""

from __future__ import annotations

import gzip
import json

from tests.core.pipeline.helpers import SHARED
from training.core.pipeline.pii import EMAIL_REPLACEMENTS, IP_REPLACEMENTS, PiiMasker


def test_emails_are_replaced_in_turn() -> None:
    masker = PiiMasker()
    text = masker.mask("Write to jane.doe@gmail.com, bob+news@mail.example.co.uk or a@b.io.")
    assert text == (
        f"Write to {EMAIL_REPLACEMENTS[0]}, {EMAIL_REPLACEMENTS[1]} or {EMAIL_REPLACEMENTS[0]}."
    )
    assert masker.totals["emails"] == 3
    assert masker.mask("not an email: user@localhost or @handle") == (
        "not an email: user@localhost or @handle"
    )


def test_only_public_ipv4_addresses_are_replaced() -> None:
    masker = PiiMasker()
    text = masker.mask(
        "public 8.8.8.8 and 203.0.113.9 (documentation range), private 10.1.2.3, "
        "192.168.0.1, 172.16.5.4, loopback 127.0.0.1, link-local 169.254.1.1, again 1.1.1.1"
    )
    assert "8.8.8.8" not in text and "1.1.1.1" not in text
    assert text.count(IP_REPLACEMENTS[0]) == 1 and text.count(IP_REPLACEMENTS[1]) == 1
    for kept in (
        "203.0.113.9",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.5.4",
        "127.0.0.1",
        "169.254.1.1",
    ):
        assert kept in text
    assert masker.totals["ips"] == 2


def test_the_cycle_restarts_for_every_document() -> None:
    masker = PiiMasker()
    assert masker.mask("a@b.io") == masker.mask("c@d.io") == EMAIL_REPLACEMENTS[0]


def test_phone_numbers_only_when_asked() -> None:
    text = "Call +44 20 7946 0958 or (555) 123-4567; in 2024 it cost 3.50 dollars, ref 12345678."
    assert PiiMasker().mask(text) == text
    masked = PiiMasker(phones=True).mask(text)
    assert masked == (
        "Call +1 555 0100 or +1 555 0100; in 2024 it cost 3.50 dollars, ref 12345678."
    )


def test_switches() -> None:
    text = "x@y.org from 8.8.8.8"
    assert PiiMasker(emails=False, ips=False).mask(text) == text
    assert PiiMasker(emails=False).mask(text).startswith("x@y.org")


def test_dolma_documents_with_addresses() -> None:
    path = SHARED / "web" / "docs" / "dolma_cc_docs_10.jsonl.gz"
    with gzip.open(path) as fh:
        texts = [json.loads(line)["text"] for line in fh]
    masker = PiiMasker()
    masked = [masker.mask(t) for t in texts]
    changed = sum(before != after for before, after in zip(texts, masked, strict=True))
    assert changed >= 3  # SOURCES.md: 3 documents carry e-mail addresses
    assert masker.totals["emails"] >= 3
    assert all("@gmail.com" not in t for t in masked)
