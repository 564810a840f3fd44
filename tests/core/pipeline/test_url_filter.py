"""URL filter: each check's reason, list parsing, Orchard's lists and the shared datatrove lists."""

from __future__ import annotations

import pytest

from tests.core.pipeline.helpers import URL_LISTS
from training.core.pipeline.url_filter import (
    SHIPPED_LISTS,
    UrlFilter,
    normalise,
    parse_list,
    shipped_list,
)


def shared_list(name: str) -> list[str]:
    return parse_list((URL_LISTS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def datatrove_words() -> UrlFilter:
    return UrlFilter(
        banned_words=shared_list("datatrove_banned_words.txt"),
        soft_words=shared_list("datatrove_soft_banned_words.txt"),
        subwords=shared_list("datatrove_banned_subwords.txt"),
    )


def reason(url_filter: UrlFilter, url: str) -> tuple[str, str] | None:
    verdict = url_filter.check(url)
    return (verdict.reason, verdict.matched) if verdict else None


def test_each_check_has_its_reason_and_the_first_hit_wins() -> None:
    f = UrlFilter(
        domains=["blocked.co.uk", "cdn.shop.example"],
        urls=["https://fine.org/exact/page"],
        banned_words=["casino"],
        soft_words=["free", "chips"],
        subwords=["pokerbonus"],
    )
    assert reason(f, "https://news.blocked.co.uk/x") == ("domain", "blocked.co.uk")
    assert reason(f, "https://cdn.shop.example/x") == ("subdomain", "cdn.shop.example")
    assert reason(f, "https://shop.example/x") is None  # only that host is blocked
    assert reason(f, "https://fine.org/exact/page") == ("url", "https://fine.org/exact/page")
    assert reason(f, "https://fine.org/exact/page?x=1") is None
    assert reason(f, "https://fine.org/Casino-Night") == ("hard_blacklisted", "casino")
    assert reason(f, "https://fine.org/free-chips") == ("soft_blacklisted", "chips free")
    assert reason(f, "https://fine.org/free-lunch") is None  # one soft word is not enough
    assert reason(f, "https://my-poker-bonus.org/") == ("blacklisted_subword", "pokerbonus")
    # domain is checked before words
    assert reason(f, "https://blocked.co.uk/casino")[0] == "domain"


def test_soft_word_threshold_is_configurable() -> None:
    f = UrlFilter(soft_words=["a1", "b2", "c3"], soft_word_threshold=3)
    assert f.check("https://x.org/a1/b2") is None
    assert reason(f, "https://x.org/a1/b2/c3") == ("soft_blacklisted", "a1 b2 c3")


def test_ip_hosts_and_odd_urls() -> None:
    f = UrlFilter(domains=["115.59.22.203"])
    assert reason(f, "http://115.59.22.203/page") == ("subdomain", "115.59.22.203")
    assert f.check("http://[::1/broken") is None  # a malformed URL is not an error


def test_list_parsing_and_normalising() -> None:
    text = "# comment\n\n  porn \nblow job\n#xx\n"
    assert parse_list(text) == ["porn", "blow job"]
    assert normalise("2 Girls-1 Cup!") == "2girls1cup"
    assert UrlFilter(subwords=["2 girls 1 cup"]).check("https://x.org/2girls1cup.html")


def test_shipped_lists_are_small_and_block_what_they_list() -> None:
    lists = {name: shipped_list(name) for name in SHIPPED_LISTS}
    assert all(20 <= len(entries) <= 100 for entries in lists.values())
    f = UrlFilter(
        domains=lists["domains"],
        banned_words=lists["banned_words"],
        soft_words=lists["soft_words"],
        subwords=lists["subwords"],
    )
    assert reason(f, "https://www.pornhub.com/view")[0] == "domain"
    assert reason(f, "https://example.org/hot-teen-cams")[0] == "soft_blacklisted"
    assert f.check("https://en.wikipedia.org/wiki/Sussex") is None
    assert f.check("https://www.bbc.co.uk/news/uk-england-essex-12345") is None


def test_datatrove_word_lists(datatrove_words: UrlFilter) -> None:
    assert reason(datatrove_words, "https://x.org/videos/bukkake/1")[0] == "hard_blacklisted"
    assert reason(datatrove_words, "https://x.org/brunette/babes")[0] == "soft_blacklisted"
    assert datatrove_words.check("https://x.org/brunette-hair-styles") is None
    assert reason(datatrove_words, "https://x.org/chaturbateclips")[0] == "blacklisted_subword"
    assert datatrove_words.check("https://www.nature.com/articles/s41586-020-2649-2") is None


def test_ut1_domain_sample_is_blocked_by_domain_or_host() -> None:
    domains = shared_list("datatrove_ut1_blocklist_domains_sample5000.txt")
    f = UrlFilter(domains=domains)
    reasons = {f.check(f"http://{d}/index.html").reason for d in domains}
    assert reasons <= {"domain", "subdomain"}
    assert f.check("https://www.wikipedia.org/") is None


def test_mixed_adult_hosts_are_not_blocked_by_orchards_lists() -> None:
    """UT1's mixed_adult hosts (4chan, image hosts...) must not be blocked outright by domain."""
    f = UrlFilter(domains=shipped_list("domains"))
    hosts = shared_list("ut1_mixed_adult_domains.txt")
    assert [h for h in hosts if f.check(f"https://{h}/")] == []


def _url_variants(host: str) -> list[str]:
    """The same host written the ways URLs in the wild write it."""
    ideographic = host.replace(".", "\u3002")  # full stops tldextract reads as dots
    return [
        f"https://{host}/page",
        f"http://WWW.{host.upper()}:8080/x?y=1",
        f"https://user:pw@news.{host}/",
        f"https://{ideographic}/",
        f"{host}/no-scheme",
        f"https://not-{host}.example/",
        f"https://example.org/?next=https://{host}/",
    ]


def test_scanning_for_blocked_domains_gives_the_verdicts_of_the_full_host_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ut1 = shared_list("datatrove_ut1_blocklist_domains_sample5000.txt")
    domains = shipped_list("domains") + ut1[: UrlFilter.SCAN_LIMIT - 60]
    scanning = UrlFilter(domains=domains)
    full = UrlFilter(domains=domains)
    full.scan_domains = False
    assert scanning.scan_domains and len(scanning.domains) <= UrlFilter.SCAN_LIMIT
    hosts = domains + ut1[-200:] + shared_list("ut1_mixed_adult_domains.txt")[:200]
    urls = [url for host in hosts for url in _url_variants(host)]
    verdicts = [scanning.check(url) for url in urls]
    assert verdicts == [full.check(url) for url in urls]
    assert {v.reason for v in verdicts if v} == {"domain", "subdomain"}

    def no_tldextract() -> None:
        raise AssertionError("tldextract loaded for a URL that mentions no blocked domain")

    monkeypatch.setattr("training.core.pipeline.url_filter._tld_extractor", no_tldextract)
    assert scanning.check("https://www.wikipedia.org/wiki/Orchard") is None
    with pytest.raises(AssertionError):
        full.check("https://www.wikipedia.org/wiki/Orchard")


def test_long_domain_lists_skip_the_scan() -> None:
    domains = shared_list("datatrove_ut1_blocklist_domains_sample5000.txt")
    assert not UrlFilter(domains=domains).scan_domains
