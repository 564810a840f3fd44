"""The arena: anonymous battles, final votes, a leaderboard, and votes as preference data."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from labeling import services as labeling
from labeling.models import Item, Ranking
from training import services
from training.models import ArenaBattle

pytestmark = pytest.mark.django_db


@pytest.fixture
def second(tiny_model_dir: Any, people: dict) -> Any:
    staging = services.artifacts_root() / "staging-arena"
    shutil.copytree(tiny_model_dir, staging)
    return services.artifact_register_dir(
        source=staging, kind="checkpoint", name="zebra", run=None, parents=[], user=people["tom"]
    )


def test_a_battle_is_anonymous_until_the_vote(client_for, tiny_checkpoint, second) -> None:
    lena = client_for("lena")
    made = lena.post("/arena/", {"prompt": "Hi"})
    battle = ArenaBattle.objects.get()
    assert made.url == f"/arena/{battle.pk}/"
    assert {battle.checkpoint_a, battle.checkpoint_b} == {tiny_checkpoint, second}
    page = lena.get(made.url).content.decode().split("<main>")[1]
    assert "zebra" not in page and "tiny" not in page
    assert lena.post(f"/arena/{battle.pk}/vote/", {"vote": "sideways"}).status_code == 302
    battle.refresh_from_db()
    assert battle.vote == ""
    lena.post(f"/arena/{battle.pk}/vote/", {"vote": "a"})
    lena.post(f"/arena/{battle.pk}/vote/", {"vote": "b"})  # the first vote is final
    battle.refresh_from_db()
    assert battle.vote == "a"
    revealed = lena.get(made.url).content.decode()
    assert "zebra" in revealed and "tiny" in revealed
    assert client_for("leo").get(made.url).status_code == 404


def test_leaderboard_and_votes_as_preferences(client_for, people, tiny_checkpoint, second):
    for index in range(6):
        ArenaBattle.objects.create(
            user=people["lena"],
            prompt=f"q{index}",
            checkpoint_a=tiny_checkpoint,
            checkpoint_b=second,
            reply_a="good",
            reply_b="bad",
            vote="a" if index < 5 else "tie",
        )
    page = client_for("lena").get("/arena/leaderboard/").content.decode()
    assert page.index(f"#{tiny_checkpoint.pk} tiny") < page.index(f"#{second.pk} zebra")
    assert "6 arena votes" in page
    project = labeling.project_create(user=people["tom"], name="arena prefs")
    tom = client_for("tom")
    tom.post("/labeling/from-arena/", {"project": project.pk})
    tom.post("/labeling/from-arena/", {"project": project.pk})  # nothing imported twice
    assert Item.objects.filter(project=project).count() == 6
    assert Ranking.objects.filter(order=[[0], [1]]).count() == 5
    assert (
        client_for("lena").post("/labeling/from-arena/", {"project": project.pk}).status_code == 403
    )


def test_the_arena_needs_two_checkpoints(client_for, tiny_checkpoint) -> None:
    page = client_for("lena").get("/arena/").content.decode()
    assert "needs at least two checkpoints" in page
