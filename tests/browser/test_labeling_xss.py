"""Stored XSS in the labeling pages, in a real browser. Hostile text goes into every field a
person types (project name, description, Markdown guidelines and system prompt, task prompts,
identity seeds, imported conversations and their tags, every kind of turn, the review comment)
through the pages' own forms, and every page that shows it is visited: Chromium reports no
dialog, no Content-Security-Policy violation (markup that reached the page as HTML), no request to
another origin and no console error, and the hostile text is on the page as text."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_labeling_flow import log_in, log_out
from tests.support.xss import HOSTILE, HOSTILE_LINES, LIVE_MARKUP, PAYLOADS, RECORD_CSP, culprits

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

GUIDELINES = "\n\n".join(
    [
        HOSTILE,
        "# Rules " + PAYLOADS[1],
        "\n".join(f"- {p}" for p in PAYLOADS),
        "| a | b |\n|---|---|\n| " + PAYLOADS[2] + " | " + PAYLOADS[7] + " |",
        "```\n" + HOSTILE + "\n```",
        "<details open><summary>x</summary>" + PAYLOADS[0] + "</details>",
        HOSTILE_LINES,
    ]
)
TOOL_CALL = json.dumps({"name": "lookup", "arguments": {"query": HOSTILE}})
# What is always shown as text somewhere once the hostile project name is on a page.
IN_NAME = PAYLOADS[:2]


def page_text(page: Page) -> str:
    """What a person reads: the rendered text and the text in form fields."""
    fields = page.locator("textarea, input[type=text]").evaluate_all(
        "els => els.map(e => e.value).join('\\n')"
    )
    return page.locator("body").inner_text() + "\n" + fields


def check(page: Page, who: str, *shown: str) -> None:
    """The page as it stands: nothing live, nothing blocked, the hostile text shown as text."""
    live = page.evaluate(LIVE_MARKUP, "body")
    assert live == [], (page.url, live, culprits(live))
    assert page.evaluate("window.cspViolations") == [], page.url
    expect(page.locator("header .whoami")).to_contain_text(who)  # hx-get="/logout/" never ran
    text = page_text(page)
    for payload in shown or IN_NAME:
        assert payload in text, (page.url, payload)


def visit(page: Page, url: str, who: str, *shown: str) -> None:
    page.goto(url)  # returns after the load event: images and scripts have had their try
    check(page, who, *shown)


def test_hostile_text_is_inert_on_every_labeling_page(browser_page, live_server, people, tmp_path):
    from labeling.models import Conversation, Project

    page, problems = browser_page
    base = live_server.url
    dialogs: list[str] = []
    foreign: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: r.url.startswith(base) or foreign.append(r.url))
    page.add_init_script(RECORD_CSP)

    # --- tom: a project, tasks, identity seeds and an import, all typed into the pages ---------
    log_in(page, base, "tom")
    page.goto(f"{base}/labeling/projects/new/")
    page.fill("#id_name", HOSTILE[:200])
    page.fill("#id_description", HOSTILE)
    page.fill("#id_guidelines", GUIDELINES)
    page.fill("#id_system_prompts_text", HOSTILE)
    page.fill("#id_overlap", "1")
    page.click("main button:has-text('Create project')")
    page.wait_for_url("**/labeling/projects/*/")
    project = Project.objects.get()
    assert project.name == HOSTILE[:200]
    assert project.guidelines.replace("\r\n", "\n") == GUIDELINES
    project_url = f"{base}{project.get_absolute_url()}"
    check(page, "tom")

    page.select_option("select[name=kind]", "reply")
    page.fill("textarea[name=prompts]", "\n".join(PAYLOADS))
    page.click("button:has-text('Add tasks')")
    expect(page.locator("ul.messages")).to_contain_text(f"Added {len(PAYLOADS)} tasks")

    page.goto(f"{base}/labeling/projects/{project.pk}/seed/identity/")
    page.fill("#id_assistant_name", HOSTILE[:100])
    page.fill("#id_maker", HOSTILE[:200])
    page.fill("#id_purpose", HOSTILE[:500])  # the field's limit
    page.fill("#id_limitations", "\n".join(PAYLOADS))
    page.check("#id_approve")
    page.click("main button:has-text('Add conversations')")
    expect(page.locator("ul.messages")).to_contain_text("Added 6 identity conversations")

    imported = {
        "id": HOSTILE,
        "tags": PAYLOADS,
        "messages": [
            {"role": "system", "content": HOSTILE},
            {"role": "user", "content": HOSTILE},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": json.loads(TOOL_CALL)},
                ],
            },
            {"role": "tool", "content": HOSTILE},
            {"role": "assistant", "content": HOSTILE},
        ],
    }
    broken = {"messages": [{"role": HOSTILE, "content": HOSTILE}]}
    upload = tmp_path / "hostile.jsonl"
    upload.write_text(f"{json.dumps(imported)}\n{json.dumps(broken)}\n", encoding="utf-8")
    page.goto(f"{base}/labeling/projects/{project.pk}/import/")
    page.set_input_files("#id_file", str(upload))
    page.select_option("#id_status", "approved")
    page.fill("#id_tags", ", ".join(PAYLOADS))
    page.click("main button:has-text('Import')")
    expect(page.locator("ul.messages")).to_contain_text("Imported 1 conversations")
    check(page, "tom", PAYLOADS[0])  # the refused line, quoted in the report
    log_out(page)

    # --- lena writes every kind of turn; previews and the ChatML view show them ---------------
    log_in(page, base, "lena")
    page.goto(project_url)
    check(page, "lena")
    page.click("button:has-text('Start the next task')")
    page.wait_for_url("**/labeling/conversations/*/")
    conversation = Conversation.objects.get(author=people["lena"])
    editor_url = f"{base}{conversation.get_absolute_url()}"
    texts = page.locator("#turns textarea[name=content]")
    texts.nth(1).fill(HOSTILE)
    # the last reply one payload a line: Markdown's block syntax (reference links) applies
    for role, text in (("tool_call", TOOL_CALL), ("tool", HOSTILE), ("assistant", HOSTILE_LINES)):
        page.click(f".add-turns button[data-add={role}]")
        texts.last.fill(text)
    expect(page.locator("#chatml span.assistant").last).to_contain_text(PAYLOADS[-1])
    open_previews(page)
    check(page, "lena", *PAYLOADS)
    page.click("#submit-button")
    page.wait_for_url(project_url)
    assert Conversation.objects.get(pk=conversation.pk).status == "submitted"
    log_out(page)

    # --- rita reads it and asks for changes with a hostile comment ------------------------------
    log_in(page, base, "rita")
    page.goto(project_url)
    page.click("button:has-text('Review the next conversation')")
    page.wait_for_url(f"**/labeling/conversations/{conversation.pk}/review/")
    check(page, "rita", *PAYLOADS)  # in the turns' edit boxes
    page.fill("textarea[name=comment]", HOSTILE)
    page.click("button:has-text('Request changes')")
    expect(page.locator("ul.messages")).to_contain_text("Review saved")
    visit(page, f"{base}/labeling/conversations/{conversation.pk}/history/", "rita", *PAYLOADS)
    log_out(page)

    # --- lena sees the comment beside her text, previews everything, resubmits -----------------
    log_in(page, base, "lena")
    visit(page, f"{base}/labeling/mine/", "lena", PAYLOADS[0])
    visit(page, editor_url, "lena", *PAYLOADS)
    expect(page.locator(".feedback blockquote.comment")).to_contain_text(PAYLOADS[1])
    open_previews(page)
    page.locator("#turns textarea[name=content]").last.fill(HOSTILE + " (fixed)")
    expect(page.locator("#chatml span.assistant").last).to_contain_text("(fixed)")
    check(page, "lena", *PAYLOADS)
    page.click("#submit-button")
    page.wait_for_url(project_url)
    log_out(page)

    log_in(page, base, "rita")
    page.goto(project_url)
    page.click("button:has-text('Review the next conversation')")
    page.wait_for_url(f"**/labeling/conversations/{conversation.pk}/review/")
    page.click("#review-form button[value=approve]")
    expect(page.locator("ul.messages")).to_contain_text("Review saved")
    log_out(page)

    # --- tom: every page that lists, previews or exports it ------------------------------------
    log_in(page, base, "tom")
    visit(page, f"{base}/labeling/", "tom")
    visit(page, project_url, "tom")
    visit(page, f"{base}/labeling/projects/{project.pk}/edit/", "tom", *PAYLOADS)
    visit(page, f"{base}/labeling/projects/{project.pk}/conversations/", "tom", PAYLOADS[0][:40])
    visit(page, f"{base}/labeling/conversations/{conversation.pk}/history/", "tom", *PAYLOADS)
    imported_row = Conversation.objects.get(source__startswith="import:")
    visit(page, f"{base}/labeling/conversations/{imported_row.pk}/", "tom", *PAYLOADS)
    visit(page, f"{base}/labeling/projects/{project.pk}/export/", "tom", *PAYLOADS)
    page.click("main button:has-text('Export')")
    page.wait_for_url("**/labeling/snapshots/*/")
    check(page, "tom", *PAYLOADS)

    assert dialogs == [], culprits(dialogs)
    assert foreign == [], culprits(foreign)
    assert problems == [], problems  # includes "Refused to ..." CSP reports


def open_previews(page: Page) -> None:
    """Open the Markdown preview of every turn (rendered on the server, put in with innerHTML)."""
    buttons = page.locator("#turns button[data-preview]")
    for index in range(buttons.count()):
        buttons.nth(index).click()
    previews = page.locator("#turns .preview")
    for index in range(buttons.count()):
        expect(previews.nth(index)).to_be_visible()
    expect(previews.first).to_contain_text("{{7*7}} {% debug %}")
