"""The labeling loop in a real browser: a trainer queues prompts, a labeler writes replies in the
editor (in-place turns, shortcuts, the live ChatML view), a reviewer sends it back and then
approves it, and the trainer exports a snapshot that `datasets` (what TRL's SFTTrainer uses)
loads. Then the editor's safety nets: autosave, the browser copy that survives a crash or an
expired session, and the conflict banner that keeps a stale tab from overwriting newer text."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SAVED = re.compile(r"^Saved at ")
SYSTEM = "You are a helpful assistant."


@pytest.fixture
def project(people):
    """As tests/labeling/conftest.py's: tom's project, two labelers per task, a system prompt."""
    from labeling import services

    return services.project_create(
        user=people["tom"],
        name="Arithmetic helper",
        guidelines="# Be exact\n\nShow the **steps**.",
        system_prompts=[SYSTEM],
        required_turns=1,
        overlap=2,
    )


def log_in(page: Page, base: str, name: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("main input[name=username]", name)
    page.fill("main input[name=password]", f"pw-{name}")
    page.click("main button[type=submit]")
    expect(page.locator("header .whoami")).to_contain_text(name)


def log_out(page: Page) -> None:
    page.click("header .whoami button:has-text('Log out')")
    page.wait_for_url("**/login/**")


def watch(page: Page, problems: list[str]) -> Page:
    """Collect console errors and page errors of another page, as the fixture does for its own."""
    page.set_default_timeout(20_000)
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page


def unexpected(problems: list[str], *provoked: str) -> list[str]:
    """Console errors other than Chromium's "Failed to load resource: ..." notes on the responses
    (or network failures) a test provokes on purpose, e.g. "status of 409"."""
    return [
        p
        for p in problems
        if not (p.startswith("Failed to load resource: ") and any(e in p for e in provoked))
    ]


def turn_texts(page: Page) -> list[str]:
    return page.locator("#turns textarea[name=content]").evaluate_all("ts => ts.map(t => t.value)")


def test_write_submit_review_export(browser_page, live_server, people, project, tmp_path):
    from labeling.models import Conversation, ConversationStatus

    page, problems = browser_page
    base = live_server.url
    prompts = ["What is 6 times 7?", "Name a prime number above 10."]
    first_reply = "6 times 7 is 42."
    final_reply = "6 × 7 = 42: six groups of seven make forty-two."

    # tom queues two "write the assistant reply" tasks on the project page
    log_in(page, base, "tom")
    page.goto(f"{base}{project.get_absolute_url()}")
    page.select_option("select[name=kind]", "reply")
    page.fill("textarea[name=prompts]", "\n".join(prompts))
    page.click("button:has-text('Add tasks')")
    expect(page.locator("ul.messages")).to_contain_text("Added 2 tasks")
    log_out(page)

    # lena takes the first task: the prompt after the system prompt, guidelines beside it
    log_in(page, base, "lena")
    page.goto(f"{base}{project.get_absolute_url()}")
    page.click("button:has-text('Start the next task')")
    page.wait_for_url("**/labeling/conversations/*/")
    conversation_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    guidelines = page.locator("aside.guidelines .markdown")
    expect(guidelines.locator("h1")).to_have_text("Be exact")
    expect(guidelines.locator("strong")).to_have_text("steps")
    assert turn_texts(page) == [SYSTEM, prompts[0]]

    # add an assistant turn with the button: in place, no reload
    page.evaluate("window.stillTheSamePage = true")
    page.click(".add-turns button[data-add=assistant]")
    turns = page.locator("#turns fieldset.turn")
    expect(turns).to_have_count(3)
    assert page.evaluate("window.stillTheSamePage") is True
    expect(turns.nth(2).locator("select[name=role]")).to_have_value("assistant")
    expect(turns.nth(2).locator("textarea")).to_be_focused()
    page.keyboard.type(first_reply)
    expect(turns.nth(2).locator("[data-counts]")).to_have_text(f"{len(first_reply)} characters")

    # the ChatML view follows the text and marks the assistant's reply as trained
    expect(page.locator("#chatml span.assistant")).to_contain_text(first_reply)
    expect(page.locator("#chatml span.assistant")).to_contain_text("<|im_end|>")
    expect(page.locator("#chatml")).to_contain_text(f"<|im_start|>user\n{prompts[0]}<|im_end|>")
    assert prompts[0] not in page.locator("#chatml span.assistant").inner_text()

    # Alt+Shift+U adds a user turn; its ✕ deletes it again (empty: no question asked)
    page.keyboard.press("Alt+Shift+U")
    expect(turns).to_have_count(4)
    expect(turns.nth(3).locator("select[name=role]")).to_have_value("user")
    expect(turns.nth(3).locator("textarea")).to_be_focused()
    turns.nth(3).locator("button[data-delete]").click()
    expect(turns).to_have_count(3)
    assert page.evaluate("window.stillTheSamePage") is True

    page.click("#submit-button")
    page.wait_for_url(f"**{project.get_absolute_url()}")
    expect(page.locator("ul.messages")).to_contain_text("Submitted for review")
    conversation = Conversation.objects.get(pk=conversation_id)
    assert conversation.status == ConversationStatus.SUBMITTED
    assert [m["content"] for m in conversation.messages][1:] == [prompts[0], first_reply]
    log_out(page)

    # rita asks for changes
    comment = "Show the multiplication, please."
    log_in(page, base, "rita")
    page.goto(f"{base}{project.get_absolute_url()}")
    page.click("button:has-text('Review the next conversation')")
    page.wait_for_url(f"**/labeling/conversations/{conversation_id}/review/")
    expect(page.locator("#review-turns")).to_contain_text(first_reply)
    page.fill("textarea[name=comment]", comment)
    page.click("button:has-text('Request changes')")
    expect(page.locator("ul.messages")).to_contain_text("Review saved")
    assert Conversation.objects.get(pk=conversation_id).status == ConversationStatus.REJECTED
    log_out(page)

    # lena finds it in My work, reads the comment, edits and resubmits
    log_in(page, base, "lena")
    page.goto(f"{base}/labeling/mine/")
    page.click(f"a:has-text('#{conversation_id}')")
    page.wait_for_url(f"**/labeling/conversations/{conversation_id}/")  # loaded, editor.js too
    expect(page.locator(".feedback blockquote.comment")).to_have_text(comment)
    expect(page.locator(".feedback h3")).to_contain_text("Changes requested")
    page.locator("#turns textarea[name=content]").nth(2).fill(final_reply)
    expect(page.locator("#chatml span.assistant")).to_contain_text(final_reply)
    page.click("#submit-button:has-text('Save and resubmit')")
    page.wait_for_url(f"**{project.get_absolute_url()}")
    assert Conversation.objects.get(pk=conversation_id).status == ConversationStatus.SUBMITTED
    log_out(page)

    # rita approves
    log_in(page, base, "rita")
    page.goto(f"{base}{project.get_absolute_url()}")
    page.click("button:has-text('Review the next conversation')")
    page.wait_for_url(f"**/labeling/conversations/{conversation_id}/review/")
    expect(page.locator("#review-turns")).to_contain_text(final_reply)
    page.click("#review-form button[value=approve]")
    expect(page.locator("ul.messages")).to_contain_text("Review saved")
    assert Conversation.objects.get(pk=conversation_id).status == ConversationStatus.APPROVED
    log_out(page)

    # tom exports a snapshot and downloads its training file
    log_in(page, base, "tom")
    page.goto(f"{base}/labeling/projects/{project.pk}/export/")
    expect(page.locator("main")).to_contain_text("1 approved conversation will be exported")
    expect(page.locator("article.preview-conversation")).to_contain_text(final_reply)
    page.fill("input[name=validation_fraction]", "0")  # one conversation: keep it in train
    page.click("main button:has-text('Export')")
    page.wait_for_url("**/labeling/snapshots/*/")
    expect(page.locator("dl.facts")).to_contain_text("lena")
    expect(page.locator("article.preview-conversation")).to_contain_text(final_reply)
    with page.expect_download() as download:
        page.click("a:has-text('train.jsonl')")
    train = tmp_path / "train.jsonl"
    download.value.save_as(train)

    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    expected = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": prompts[0]},
        {"role": "assistant", "content": final_reply},
    ]
    assert rows == [{"messages": expected}]

    import datasets

    loaded = datasets.load_dataset(
        "json", data_files=str(train), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert loaded.num_rows == 1
    assert loaded[0]["messages"] == expected
    assert problems == [], problems


def _draft_for_lena(project, people, messages=None):
    from labeling import services

    return services.conversation_create(
        project=project,
        user=people["lena"],
        messages=messages
        or [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": ""},
        ],
    )


def test_autosave_survives_reload(browser_page, live_server, people, project):
    from labeling.models import Conversation

    page, problems = browser_page
    conversation = _draft_for_lena(project, people)
    log_in(page, live_server.url, "lena")
    page.goto(f"{live_server.url}{conversation.get_absolute_url()}")
    text = "2 + 3 = 5, because counting three on from two gives five."
    page.locator("#turns textarea[name=content]").nth(2).fill(text)
    expect(page.locator("#save-state")).to_have_text("Unsaved changes")
    expect(page.locator("#save-state")).to_have_text(SAVED, timeout=10_000)

    saved = Conversation.objects.get(pk=conversation.pk)
    assert saved.messages[2] == {"role": "assistant", "content": text}
    assert saved.version == conversation.version + 1
    expect(page.locator("#version-label")).to_have_text(str(saved.version))

    page.reload()
    assert turn_texts(page)[2] == text
    expect(page.locator("input[name=version]")).to_have_value(str(saved.version))
    expect(page.locator("#restore-banner")).to_be_hidden()  # nothing unsaved to offer
    assert problems == [], problems


def crash(page: Page) -> None:
    """Kill the renderer process of ``page`` (of this test's own Chromium): a tab crash, with no
    pagehide and no beacon. The renderer is the one that spends the CPU the page is made to."""
    session = page.context.browser.new_browser_cdp_session()

    def cpu_times() -> dict[int, float]:
        info = session.send("SystemInfo.getProcessInfo")["processInfo"]
        return {p["id"]: p["cpuTime"] for p in info if p["type"] == "renderer"}

    before = cpu_times()
    page.evaluate("() => { const start = Date.now(); while (Date.now() - start < 1000); }")
    after = cpu_times()
    session.detach()
    busy = sorted((after[p] - before.get(p, 0.0), p) for p in after)
    (second, _), (most, pid) = busy[-2:]
    assert most >= 0.05 and most > 3 * second, busy  # busy, the others idle
    with page.expect_event("crash"):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["expired-session", "crash"])
def test_unsaved_text_is_restored_after_a_crash_or_expired_session(
    browser_page, live_server, people, project, how
):
    from labeling.models import Conversation

    _, problems = browser_page
    base = live_server.url
    conversation = _draft_for_lena(project, people)
    editor_url = f"{base}{conversation.get_absolute_url()}"
    # A context of our own: its pages share cookies and localStorage, like a browser's tabs.
    tabs = browser_page[0].context.browser.new_context()
    page = watch(tabs.new_page(), problems)
    log_in(page, base, "lena")
    page.goto(editor_url)
    text = "Five. Two and three make five."

    if how == "expired-session":
        # the session ends in another tab; autosave gets the login redirect instead of a save
        other = watch(tabs.new_page(), problems)
        other.goto(f"{base}/labeling/")
        log_out(other)
        other.close()
        page.locator("#turns textarea[name=content]").nth(2).fill(text)
        expect(page.locator("#save-state")).to_contain_text("session expired", timeout=10_000)
        page.reload()  # the login page, then back to the editor
        page.wait_for_url("**/login/**")
        page.fill("main input[name=username]", "lena")
        page.fill("main input[name=password]", "pw-lena")
        page.click("main button[type=submit]")
        page.wait_for_url(editor_url)
    else:
        # Autosave cannot reach the server, then the tab's renderer dies: no pagehide, no beacon
        # (a beacon from a page that is merely left or closed gets through even offline).
        page.route("**/autosave/", lambda route: route.abort())
        page.locator("#turns textarea[name=content]").nth(2).fill(text)
        expect(page.locator("#save-state")).to_contain_text("Not saved yet", timeout=10_000)
        crash(page)
        page = watch(tabs.new_page(), problems)
        page.goto(editor_url)

    assert Conversation.objects.get(pk=conversation.pk).messages[2]["content"] == ""
    assert turn_texts(page)[2] == ""
    banner = page.locator("#restore-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("never saved")
    page.click("#restore-yes")
    expect(banner).to_be_hidden()
    assert turn_texts(page)[2] == text
    expect(page.locator("#save-state")).to_have_text(SAVED, timeout=10_000)
    saved = Conversation.objects.get(pk=conversation.pk)
    assert saved.messages[2] == {"role": "assistant", "content": text}

    page.reload()  # restored and saved: nothing left to offer
    assert turn_texts(page)[2] == text
    expect(page.locator("#restore-banner")).to_be_hidden()
    provoked = ("net::ERR_FAILED",) if how == "crash" else ()  # the aborted autosaves
    assert unexpected(problems, *provoked) == [], problems


def test_stale_edit_gets_a_conflict_not_an_overwrite(browser_page, live_server, people, project):
    from labeling.models import Conversation

    _, problems = browser_page
    conversation = _draft_for_lena(project, people)
    editor_url = f"{live_server.url}{conversation.get_absolute_url()}"
    tabs = browser_page[0].context.browser.new_context()  # two tabs, one session
    first = watch(tabs.new_page(), problems)
    log_in(first, live_server.url, "lena")
    first.goto(editor_url)
    second = watch(tabs.new_page(), problems)
    second.goto(editor_url)

    first.locator("#turns textarea[name=content]").nth(2).fill("5, from the first tab.")
    first.keyboard.press("Control+s")
    expect(first.locator("#save-state")).to_have_text(SAVED, timeout=10_000)
    assert Conversation.objects.get(pk=conversation.pk).version == conversation.version + 1

    second.locator("#turns textarea[name=content]").nth(2).fill("Five, from the second tab.")
    banner = second.locator("#conflict-banner")
    expect(banner).to_be_visible(timeout=10_000)
    expect(banner).to_contain_text(f"now version {conversation.version + 1}")
    expect(second.locator("#save-state")).to_contain_text("changed elsewhere")
    second.wait_for_timeout(4_500)  # another autosave tick: refused again, nothing overwritten
    stored = Conversation.objects.get(pk=conversation.pk)
    assert stored.messages[2]["content"] == "5, from the first tab."
    assert stored.version == conversation.version + 1

    second.click("#conflict-mine")
    expect(banner).to_be_hidden()
    expect(second.locator("#save-state")).to_have_text(SAVED, timeout=10_000)
    stored = Conversation.objects.get(pk=conversation.pk)
    assert stored.messages[2]["content"] == "Five, from the second tab."
    assert stored.version == conversation.version + 2
    expect(second.locator("#version-label")).to_have_text(str(stored.version))
    assert unexpected(problems, "status of 409") == [], problems


def test_submit_while_an_autosave_is_under_way_is_not_a_conflict(
    browser_page, live_server, people, project
):
    """Autosave has reached the server (new version) but its answer is still on the way when
    the labeler clicks Submit: the form must not post the version the autosave just replaced."""
    from labeling.models import Conversation, ConversationStatus

    page, problems = browser_page
    conversation = _draft_for_lena(project, people)
    log_in(page, live_server.url, "lena")
    page.goto(f"{live_server.url}{conversation.get_absolute_url()}")
    held = []

    def hold_the_answer(route):
        held.append((route, route.fetch()))  # the server saves now; the page hears later

    page.route("**/autosave/", hold_the_answer)
    text = "2 + 3 = 5."
    page.locator("#turns textarea[name=content]").nth(2).fill(text)
    for _ in range(100):  # autosave runs every 4 s
        if held:
            break
        page.wait_for_timeout(100)
    assert len(held) == 1
    assert Conversation.objects.get(pk=conversation.pk).version == conversation.version + 1
    page.click("#submit-button")
    page.wait_for_timeout(300)
    route, response = held[0]
    route.fulfill(response=response)
    expect(page.locator("ul.messages")).to_contain_text("Submitted for review")  # reloaded
    stored = Conversation.objects.get(pk=conversation.pk)
    assert stored.status == ConversationStatus.SUBMITTED
    assert stored.messages[2]["content"] == text
    assert problems == [], problems


def _edit_until_the_next_autosave_kills_the_server(page: Page, web_server, conversation) -> list:
    """lena opens ``conversation`` on a fresh web server; the next autosave reaches the server,
    which saves it and is killed (kill -9) before its answer leaves. Returns the list the
    statuses of every autosave answer go to."""
    web_server.start()
    log_in(page, web_server.url, "lena")
    page.goto(f"{web_server.url}{conversation.get_absolute_url()}")
    answers: list[int] = []
    page.on("response", lambda r: r.url.endswith("/autosave/") and answers.append(r.status))

    def die_after_saving(route) -> None:
        route.fetch()  # the server has the request and commits the save...
        web_server.kill9()  # ...and is killed before its answer leaves
        route.abort("connectionreset")

    page.route("**/autosave/", die_after_saving, times=1)
    return answers


def test_no_draft_is_lost_when_the_web_server_dies_during_an_autosave(
    browser_page, web_server, people, project
):
    """kill -9 of the web server while an autosave is under way (the server has saved it, the
    answer never arrives), more typing while it is down, a restart on the same port: every
    character typed ends up saved, and the editor's own lost save comes back as a 409 that it
    recognises instead of a conflict for the labeler to settle."""
    from labeling.models import Conversation

    page, problems = browser_page
    conversation = _draft_for_lena(project, people)
    answers = _edit_until_the_next_autosave_kills_the_server(page, web_server, conversation)
    state = page.locator("#save-state")
    box = page.locator("#turns textarea[name=content]").nth(2)

    def saved_text() -> tuple[str, int]:
        stored = Conversation.objects.get(pk=conversation.pk)
        return stored.messages[2]["content"], stored.version

    box.click()
    page.keyboard.type("2 + 3 = 5")
    page.keyboard.press("Control+s")  # autosave now rather than at the next 4-second tick
    expect(state).to_contain_text("Offline?", timeout=10_000)
    assert saved_text() == ("2 + 3 = 5", conversation.version + 1)

    # typed while the server is down: the autosave cannot connect, the text waits in the page
    page.keyboard.type(", because three on from two is five.")
    expect(state).to_have_text("Unsaved changes")
    page.keyboard.press("Control+s")
    expect(state).to_contain_text("Offline?", timeout=10_000)

    web_server.start()  # same port, same database; the browser's session is still valid
    typed = "2 + 3 = 5, because three on from two is five."
    expect(state).to_have_text(SAVED, timeout=15_000)  # the next tick, no keypress needed
    assert saved_text() == (typed, conversation.version + 2)
    assert answers == [409, 200]  # its own lost save, recognised; then the rest on top of it
    expect(page.locator("#conflict-banner")).to_be_hidden()

    page.reload()
    assert turn_texts(page)[2] == typed
    expect(page.locator("#restore-banner")).to_be_hidden()
    assert unexpected(problems, "net::ERR_CONNECTION", "status of 409") == [], problems


def test_a_lost_autosave_holding_a_tool_call_is_recognised_as_the_editors_own(
    browser_page, web_server, people, project
):
    """As above, with a tool call typed in compact JSON: the server stores it reformatted, so
    the editor cannot recognise its own save by comparing text. The server compares for it."""
    from labeling.models import Conversation

    page, problems = browser_page
    conversation = _draft_for_lena(project, people)
    answers = _edit_until_the_next_autosave_kills_the_server(page, web_server, conversation)
    state = page.locator("#save-state")
    call = '{"name":"calculator","arguments":{"expr":"2+3"}}'
    page.click(".add-turns button[data-add=tool_call]")
    page.keyboard.type(call)
    page.keyboard.press("Control+s")
    expect(state).to_contain_text("Offline?", timeout=10_000)
    stored = Conversation.objects.get(pk=conversation.pk)
    assert stored.version == conversation.version + 1
    assert stored.messages[2]["tool_calls"][0]["function"] == json.loads(call)

    page.click(".add-turns button[data-add=tool]")  # a tool result turn, focused
    page.keyboard.type("5")
    page.keyboard.press("Control+s")
    expect(state).to_contain_text("Offline?", timeout=10_000)

    web_server.start()
    expect(state).to_have_text(SAVED, timeout=15_000)
    assert answers == [409, 200]
    expect(page.locator("#conflict-banner")).to_be_hidden()
    stored = Conversation.objects.get(pk=conversation.pk)
    assert stored.version == conversation.version + 2
    assert stored.messages[-1] == {"role": "tool", "content": "5"}
    assert unexpected(problems, "net::ERR_CONNECTION", "status of 409") == [], problems


def test_buttons_stay_put_while_the_save_state_changes(browser_page, live_server, people, project):
    """Scrolled to the bottom with "Offline?" showing, a click on an add button blurs the text
    being typed, which sets the state to "Unsaved changes": the page must not change height
    then, or the button moves away between the press and the release and the click is lost."""
    page, problems = browser_page
    conversation = _draft_for_lena(project, people)
    log_in(page, live_server.url, "lena")
    page.goto(f"{live_server.url}{conversation.get_absolute_url()}")
    page.route("**/autosave/", lambda route: route.abort("connectionrefused"))
    turns = page.locator("#turns fieldset.turn")
    page.locator("#turns textarea[name=content]").nth(2).fill("Five.")
    page.keyboard.press("Control+s")
    state = page.locator("#save-state")
    expect(state).to_contain_text("Offline?")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    offline_height = state.bounding_box()["height"]
    page.click(".add-turns button[data-add=tool]")
    expect(turns).to_have_count(4)
    expect(turns.nth(3).locator("select[name=role]")).to_have_value("tool")
    expect(state).to_have_text("Unsaved changes")
    assert state.bounding_box()["height"] == offline_height
    assert unexpected(problems, "net::ERR_CONNECTION_REFUSED") == [], problems
