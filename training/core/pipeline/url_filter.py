"""URL filter: drop pages from blocked sites or with adult words in their URL, before extraction.

RefinedWeb's design as datatrove's ``URLFilter`` codes it (PIPELINE.md section 3). Checks run in
this order and the first hit decides, with its reason and what matched:

1. ``domain``: the registered domain (``tldextract``: ``news.example.co.uk`` -> ``example.co.uk``)
   is blocked;
2. ``subdomain``: the full host name is blocked;
3. ``url``: the exact URL is blocked;
4. ``hard_blacklisted``: one URL word is a hard banned word;
5. ``soft_blacklisted``: at least ``soft_word_threshold`` (2) different URL words are soft words;
6. ``blacklisted_subword``: a banned subword occurs anywhere in the normalised URL.

URL words are the runs of letters and digits of the lower-cased URL; the normalised URL is the
lower-cased URL with everything else removed. Word-list entries are normalised the same way
(``"2 girls 1 cup"`` -> ``"2girls1cup"``), so they can be written naturally.

Lists are data handed in by the caller (one entry per line, ``#`` starts a comment). Orchard ships
small starter lists in ``lists/`` (a few dozen entries each, written for Orchard); real crawls
should add a full blocklist such as UT1's (4.5M domains, what datatrove bundles).

Differences from datatrove: URL words are lower-cased before matching (datatrove matches the URL
as written, so ``/PORN/`` slipped through); the host check uses the URL's host name, so blocked
IP addresses match too (tldextract gives IP hosts no registered domain); subwords are found by
looking up every URL substring of each subword length in a set, which needs no extra package and
stays fast for large lists.

With a short domain list (Orchard's own, or a few hundred entries) a URL that mentions none of
the blocked domains anywhere skips the host checks: neither can match it, and tldextract (a
fifth of a second to import and load its suffix list, in every worker process) is only loaded
for the URLs that need it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LISTS_DIR = Path(__file__).parent / "lists"
SHIPPED_LISTS = {
    "domains": "blocked_domains.txt",
    "banned_words": "banned_words.txt",
    "soft_words": "soft_banned_words.txt",
    "subwords": "banned_subwords.txt",
}
SOFT_WORD_THRESHOLD = 2

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
# Full stops tldextract reads as dots in host names, as browsers do.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def normalise(text: str) -> str:
    """Lower-case and drop everything but ASCII letters and digits."""
    return _NON_ALNUM.sub("", text.lower())


def parse_list(text: str | Iterable[str]) -> list[str]:
    """Entries of a list: one per line, blank lines and ``#`` comments skipped."""
    lines = text.splitlines() if isinstance(text, str) else text
    entries = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return entries


def shipped_list(name: str) -> list[str]:
    """One of Orchard's starter lists (a key of ``SHIPPED_LISTS``)."""
    return parse_list((LISTS_DIR / SHIPPED_LISTS[name]).read_text(encoding="utf-8"))


@cache
def _tld_extractor() -> Any:
    from tldextract import TLDExtract

    # The bundled Public Suffix List snapshot only: no download, no cache files.
    return TLDExtract(suffix_list_urls=(), cache_dir=None)


@dataclass(frozen=True)
class UrlVerdict:
    reason: str  # see the module docstring
    matched: str  # the blocked domain, URL or word that matched

    def scores(self) -> dict[str, str]:
        return {"matched": self.matched}


class UrlFilter:
    SCAN_LIMIT = 256

    def __init__(
        self,
        *,
        domains: Iterable[str] = (),
        urls: Iterable[str] = (),
        banned_words: Iterable[str] = (),
        soft_words: Iterable[str] = (),
        subwords: Iterable[str] = (),
        soft_word_threshold: int = SOFT_WORD_THRESHOLD,
    ) -> None:
        self.domains = frozenset(d.lower().strip(".") for d in domains)
        self.urls = frozenset(urls)
        self.banned_words = frozenset(filter(None, map(normalise, banned_words)))
        self.soft_words = frozenset(filter(None, map(normalise, soft_words)))
        self.subwords = frozenset(filter(None, map(normalise, subwords)))
        self._subword_lengths = sorted({len(w) for w in self.subwords})
        self.soft_word_threshold = soft_word_threshold
        # Scanning the URL for each blocked domain is quicker than tldextract up to this many.
        self.scan_domains = len(self.domains) <= self.SCAN_LIMIT

    def check(self, url: str) -> UrlVerdict | None:
        """Why ``url`` is blocked, or None if it passes."""
        if self.domains and (verdict := self._check_host(url)):
            return verdict
        if url in self.urls:
            return UrlVerdict("url", url)
        words = set(_NON_ALNUM.split(url.lower()))
        if hard := sorted(words & self.banned_words):
            return UrlVerdict("hard_blacklisted", hard[0])
        soft = sorted(words & self.soft_words)
        if len(soft) >= self.soft_word_threshold:
            return UrlVerdict("soft_blacklisted", " ".join(soft))
        if subword := self._find_subword(normalise(url)):
            return UrlVerdict("blacklisted_subword", subword)
        return None

    def _check_host(self, url: str) -> UrlVerdict | None:
        if self.scan_domains and not self._mentions_a_domain(url):
            return None
        parts = _tld_extractor()(url)
        registered = parts.top_domain_under_public_suffix
        if registered and registered in self.domains:
            return UrlVerdict("domain", registered)
        try:
            host = (urlsplit(url).hostname or "").strip(".")
        except ValueError:  # a malformed URL (bad IPv6 literal) has no usable host
            host = ""
        if host and host in self.domains:
            return UrlVerdict("subdomain", host)
        return None

    def _mentions_a_domain(self, url: str) -> bool:
        """Whether a blocked domain occurs anywhere in the URL (dots read as tldextract reads
        them, lower-cased). A registered domain or host name that could match is a run of the
        URL's characters, so without such an occurrence neither host check can hit."""
        text = url.translate(_DOTS).lower()
        return any(domain in text for domain in self.domains)

    def _find_subword(self, normalised: str) -> str | None:
        """The leftmost (then shortest) banned subword in ``normalised``."""
        for start in range(len(normalised)):
            for length in self._subword_lengths:
                piece = normalised[start : start + length]
                if len(piece) < length:
                    break
                if piece in self.subwords:
                    return piece
        return None
