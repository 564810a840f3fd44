"""Ranking and arena tasks in a real browser: replies ordered by dragging and with the keyboard,
ties, Ctrl+Enter; the same form of rank selects working without JavaScript; the arena's vote keys
in a labeling project and in the chat arena, where the models' names appear only after the vote.
What is stored is what the page showed."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_labeling_flow import log_in, log_out

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PROMPT = [{"role": "user", "content": "Name a fruit."}]
REPLIES = ["Apples, **crisp** ones.", "Bananas.", "Cherries, in June."]
# The ranking the page shows: the cards top to bottom, a card with the rank of the one above it
# in the same tier.
SHOWN_TIERS = """() => {
  const tiers = [];
  let above = null;
  for (const card of document.querySelectorAll("#replies li.reply")) {
    const rank = card.querySelector("select").value;
    if (rank === above) tiers[tiers.length - 1].push(Number(card.dataset.index));
    else tiers.push([Number(card.dataset.index)]);
    above = rank;
  }
  return tiers;
}"""


@pytest.fixture
def project(people):
    from labeling import services

    return services.project_create(user=people["tom"], name="Fruit preferences", overlap=1)


def add_item(project, kind: str, replies: list[str]):
    from labeling.models import Item

    return Item.objects.create(
        project=project,
        kind=kind,
        seed_messages=PROMPT,
        responses=[{"text": text} for text in replies],
        overlap=project.overlap,
    )


def card(page: Page, index: int):
    return page.locator(f"#replies li.reply[data-index='{index}']")


def cards_and_ranks(page: Page) -> list[tuple[int, str]]:
    """(reply index, its rank select's value) for every card, top to bottom."""
    pairs = page.locator("#replies li.reply").evaluate_all(
        "cards => cards.map(c => [Number(c.dataset.index), c.querySelector('select').value])"
    )
    return [tuple(pair) for pair in pairs]


def drag_and_release_outside(page: Page, source, over) -> None:
    """Drag ``source`` over the top of ``over`` (which moves it there), then let go on the
    page's heading, outside the list: no drop event, only dragend."""
    start, target = source.bounding_box(), over.bounding_box()
    page.mouse.move(start["x"] + 40, start["y"] + 10)
    page.mouse.down()
    page.mouse.move(target["x"] + 40, target["y"] + 5, steps=5)
    page.mouse.move(target["x"] + 40, target["y"] + 3, steps=2)
    heading = page.locator("h1").bounding_box()
    page.mouse.move(heading["x"] + 5, heading["y"] + 5, steps=5)
    page.mouse.up()


def start_next_task(page: Page, base: str, project) -> None:
    page.goto(f"{base}{project.get_absolute_url()}")
    page.click("button:has-text('Start the next task')")
    page.wait_for_url("**/labeling/tasks/*/**")


def test_ranking_by_drag_and_keys(browser_page, live_server, people, project):
    from labeling.models import Ranking

    page, problems = browser_page
    base = live_server.url
    dragged = add_item(project, "rank", REPLIES)
    picked = add_item(project, "rank", REPLIES)

    log_in(page, base, "lena")
    start_next_task(page, base, project)
    expect(page.locator("h1")).to_contain_text("Rank the replies")
    expect(page.locator("#replies li.reply strong")).to_have_text("crisp")  # Markdown
    assert cards_and_ranks(page) == [(0, "1"), (1, "2"), (2, "3")]

    # drag the third reply above the first: the selects follow the cards
    card(page, 2).drag_to(card(page, 0), target_position={"x": 40, "y": 3})
    expect(page.locator("#replies li.reply").first).to_have_attribute("data-index", "2")
    assert cards_and_ranks(page) == [(2, "1"), (0, "2"), (1, "3")]

    # a drag released outside the list, after it moved the card: the selects still follow
    drag_and_release_outside(page, card(page, 1), card(page, 0))
    expect(page.locator("#replies li.reply").nth(1)).to_have_attribute("data-index", "1")
    assert cards_and_ranks(page) == [(2, "1"), (1, "2"), (0, "3")]

    # Alt+↑ / Alt+↓ move the focused card and keep it focused
    card(page, 1).focus()
    page.keyboard.press("Alt+ArrowUp")
    assert cards_and_ranks(page) == [(1, "1"), (2, "2"), (0, "3")]
    expect(card(page, 1)).to_be_focused()
    card(page, 2).focus()
    page.keyboard.press("Alt+ArrowDown")
    assert cards_and_ranks(page) == [(1, "1"), (0, "2"), (2, "3")]
    expect(card(page, 2)).to_be_focused()

    # "=" ties the focused card with the one above it, and again undoes it
    page.keyboard.press("=")
    assert cards_and_ranks(page) == [(1, "1"), (0, "2"), (2, "2")]
    expect(card(page, 2)).to_have_class("reply tied")
    page.keyboard.press("=")
    assert cards_and_ranks(page) == [(1, "1"), (0, "2"), (2, "3")]
    expect(card(page, 2)).to_have_class("reply")
    page.keyboard.press("=")
    shown = page.evaluate(SHOWN_TIERS)
    assert shown == [[1], [0, 2]]

    page.keyboard.press("Control+Enter")
    expect(page.locator("ul.messages")).to_contain_text("Thank you!")
    ranking = Ranking.objects.get(item=dragged, labeler=people["lena"])
    assert ranking.order == shown == [[1], [0, 2]]
    assert not ranking.all_bad and ranking.seconds_spent is not None

    # the next task opens at once; choosing ranks in the selects puts the cards in that order
    page.wait_for_url("**/labeling/tasks/*/rank/")
    assert cards_and_ranks(page) == [(0, "1"), (1, "2"), (2, "3")]
    page.select_option("select[name=rank_0]", "3")
    page.select_option("select[name=rank_2]", "1")
    assert cards_and_ranks(page) == [(2, "1"), (1, "2"), (0, "3")]
    shown = page.evaluate(SHOWN_TIERS)
    page.click("#submit-ranking")
    expect(page.locator("ul.messages")).to_contain_text("Thank you!")
    ranking = Ranking.objects.get(item=picked, labeler=people["lena"])
    assert ranking.order == shown == [[2], [1], [0]]
    expect(page.locator("ul.messages")).to_contain_text("No tasks are waiting for you")
    log_out(page)
    assert problems == [], problems

    # without JavaScript the rank selects are the whole form: equal numbers tie
    plain = add_item(project, "rank", REPLIES)
    context = page.context.browser.new_context(java_script_enabled=False)
    leo = context.new_page()
    leo.set_default_timeout(20_000)
    leo.on("console", lambda m: m.type == "error" and problems.append(m.text))
    log_in(leo, base, "leo")
    start_next_task(leo, base, project)
    leo.select_option("select[name=rank_0]", "2")
    leo.select_option("select[name=rank_1]", "1")
    leo.select_option("select[name=rank_2]", "2")
    assert cards_and_ranks(leo) == [(0, "2"), (1, "1"), (2, "2")]  # nothing moved
    leo.check("input[name=all_bad]")
    leo.click("#submit-ranking")
    expect(leo.locator("ul.messages")).to_contain_text("Thank you!")
    ranking = Ranking.objects.get(item=plain, labeler=people["leo"])
    assert ranking.order == [[1], [0, 2]] and ranking.all_bad
    context.close()
    assert problems == [], problems


@pytest.fixture
def second_checkpoint(tiny_model_dir, people):
    """A copy of the tiny checkpoint under another name, as tests/training/test_arena.py's."""
    from training import services

    staging = services.artifacts_root() / "staging-arena-browser"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(tiny_model_dir, staging)
    return services.artifact_register_dir(
        source=staging, kind="checkpoint", name="zebra", run=None, parents=[], user=people["tom"]
    )


def test_arena_keys(browser_page, live_server, people, project, tiny_checkpoint, second_checkpoint):
    from labeling.models import Ranking
    from training.models import ArenaBattle

    page, problems = browser_page
    base = live_server.url

    # a labeling arena task: key 2 votes for B
    item = add_item(project, "arena", REPLIES[:2])
    log_in(page, base, "lena")
    start_next_task(page, base, project)
    expect(page.locator("h1")).to_contain_text("Which reply is better?")
    expect(page.locator("#arena-form article.reply h2")).to_have_text(["A", "B"])
    page.keyboard.press("2")
    expect(page.locator("ul.messages")).to_contain_text("Thank you!")
    assert Ranking.objects.get(item=item, labeler=people["lena"]).order == [[1], [0]]

    # the chat arena: two unnamed checkpoints answer, key 1 votes for A, then the names show
    page.goto(f"{base}/arena/")
    page.fill("textarea[name=prompt]", "Hi")
    page.click("main button:has-text('Battle')")
    page.wait_for_url("**/arena/*/")
    battle = ArenaBattle.objects.get(user=people["lena"])
    headings = page.locator("main .arena article.reply h2")
    expect(headings).to_have_text(["A", "B"])
    page.keyboard.press("1")
    expect(page.locator("main p.notice")).to_contain_text("You voted")
    battle.refresh_from_db()
    assert battle.vote == "a"
    names = [battle.checkpoint_a.name, battle.checkpoint_b.name]
    assert sorted(names) == ["tiny", "zebra"]
    expect(headings).to_have_text([f"A {names[0]}", f"B {names[1]}"])
    expect(page.locator("#arena-form")).to_have_count(0)
    assert problems == [], problems
