"""PII masking: replace e-mail addresses and public IPv4 addresses in kept documents.

FineWeb's last step (datatrove ``PIIFormatter``, PIPELINE.md section 11), run after dedup:

- e-mail addresses (datatrove's RFC-5322-style pattern) become ``email@example.com`` and
  ``firstname.lastname@example.org`` in turn;
- IPv4 addresses become one of six fixed addresses in turn, but only when
  ``ipaddress.ip_address(x).is_global``: private (10/8, 192.168/16, ...), loopback, link-local
  and documentation ranges stay as written, since they identify nobody;
- phone numbers (optional, off by default as in FineWeb): international ``+CC ...`` numbers and
  North-American ``(555) 123-4567`` style numbers become ``+1 555 0100``. The pattern wants
  explicit phone punctuation, so it misses bare digit runs rather than eat years and prices.

The replacement cycle restarts for every document (datatrove's cycles through a whole task), so a
document's output never depends on which documents a worker saw before it.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field

EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:(?:[A-Za-z0-9]"
    r"(?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?|\[(?:(?:25[0-5]"
    r"|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|"
    r"[A-Za-z0-9-]*[A-Za-z0-9]:)])"
)
IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
)
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4})(?!\w)"
)
# Cheap tests that rule most documents out before the full patterns run (those cost ~40 ms/MB).
_MAYBE_IPV4 = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
EMAIL_REPLACEMENTS = ("email@example.com", "firstname.lastname@example.org")
IP_REPLACEMENTS = (
    "22.214.171.124",
    "126.96.36.199",
    "188.8.131.52",
    "184.108.40.206",
    "220.127.116.11",
    "18.104.22.168",
)
PHONE_REPLACEMENT = "+1 555 0100"


def is_public_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_global
    except ValueError:
        return False


@dataclass
class _Cycle:
    """Hands out replacements in turn and counts what it replaced."""

    replacements: tuple[str, ...]
    count: int = 0

    def next(self) -> str:
        value = self.replacements[self.count % len(self.replacements)]
        self.count += 1
        return value


@dataclass(frozen=True)
class PiiMasker:
    emails: bool = True
    ips: bool = True
    phones: bool = False
    totals: Counter[str] = field(default_factory=Counter, compare=False)

    def mask(self, text: str) -> str:
        """``text`` with the enabled kinds of PII replaced; counts add up in ``totals``."""
        if self.emails and "@" in text:
            cycle = _Cycle(EMAIL_REPLACEMENTS)
            text = EMAIL.sub(lambda _m: cycle.next(), text)
            self.totals["emails"] += cycle.count
        if self.ips and _MAYBE_IPV4.search(text):
            cycle = _Cycle(IP_REPLACEMENTS)
            text = IPV4.sub(lambda m: cycle.next() if is_public_ip(m[0]) else m[0], text)
            self.totals["ips"] += cycle.count
        if self.phones:
            found = len(PHONE.findall(text))
            text = PHONE.sub(PHONE_REPLACEMENT, text)
            self.totals["phones"] += found
        return text
