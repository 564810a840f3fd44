"""The labeling rules: the queue, versions, submission, review and the numbers shown to people."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from labeling import services
from labeling.models import (
    Assignment,
    AssignmentStatus,
    ConversationStatus,
    Item,
    Review,
    Revision,
    TaskKind,
)
from tests.labeling.conftest import GOOD

pytestmark = pytest.mark.django_db


def test_guideline_edits_are_numbered_versions(project: Any, people: dict) -> None:
    updated = services.project_update(
        project=project, user=people["tom"], guidelines="# Be exact\n\nAnd kind."
    )
    assert updated.guideline_version == 2
    assert list(project.guideline_history.values_list("version", "text")) == [
        (2, "# Be exact\n\nAnd kind."),
        (1, "# Be exact\n\nShow the **steps**."),
    ]
    same = services.project_update(project=updated, user=people["tom"], overlap=3)
    assert same.guideline_version == 2  # other settings do not make a guideline version


def test_queue_respects_overlap_and_never_repeats(project: Any, people: dict) -> None:
    services.items_add(project=project, kind=TaskKind.WRITE, count=1)
    first = services.next_task(user=people["lena"], project=project)
    again = services.next_task(user=people["lena"], project=project)
    assert again == first  # the current task, not a second copy
    second = services.next_task(user=people["leo"], project=project)
    assert second is not None and second.item_id == first.item_id
    assert services.next_task(user=people["rita"], project=project) is None  # overlap 2 is full
    item = Item.objects.get()
    assert item.taken == 2


def test_finished_task_is_not_offered_again(project: Any, people: dict) -> None:
    services.items_add(project=project, kind=TaskKind.REPLY, seeds=[[GOOD[1]]])
    assignment = services.next_task(user=people["lena"], project=project)
    conversation = services.assignment_conversation(assignment=assignment)
    assert conversation.messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert conversation.messages[1] == GOOD[1]
    saved = services.conversation_save(
        conversation=conversation,
        user=people["lena"],
        messages=[*conversation.messages, {"role": "assistant", "content": "5"}],
        expected_version=conversation.version,
    )
    services.conversation_submit(
        conversation=saved, user=people["lena"], expected_version=saved.version
    )
    assert Assignment.objects.get().status == AssignmentStatus.DONE
    assert services.next_task(user=people["lena"], project=project) is None


def test_expired_lease_frees_the_slot_once(project: Any, people: dict) -> None:
    project.overlap = 1
    project.save()
    services.items_add(project=project, kind=TaskKind.WRITE, count=1)
    mine = services.next_task(user=people["lena"], project=project)
    assert services.next_task(user=people["leo"], project=project) is None
    Assignment.objects.filter(pk=mine.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.release_expired() == 1
    assert services.release_expired() == 0  # released exactly once
    theirs = services.next_task(user=people["leo"], project=project)
    assert theirs is not None and theirs.item_id == mine.item_id
    assert Item.objects.get().taken == 1


def test_skip_gives_the_task_to_someone_else(project: Any, people: dict) -> None:
    project.overlap = 1
    project.save()
    services.items_add(project=project, kind=TaskKind.WRITE, count=1)
    mine = services.next_task(user=people["lena"], project=project)
    services.assignment_skip(assignment=mine, user=people["lena"])
    assert services.next_task(user=people["lena"], project=project) is None  # not back to her
    assert services.next_task(user=people["leo"], project=project) is not None


def test_database_refuses_overfilling_and_duplicates(project: Any, people: dict) -> None:
    (item,) = services.items_add(project=project, kind=TaskKind.WRITE, count=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Item.objects.filter(pk=item.pk).update(taken=3)  # overlap is 2
    Assignment.objects.create(item=item, labeler=people["lena"], lease_expires_at=timezone.now())
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(
            item=item, labeler=people["lena"], lease_expires_at=timezone.now()
        )


def test_stale_save_is_refused_with_the_current_copy(project: Any, people: dict) -> None:
    conversation = services.conversation_create(project=project, user=people["lena"])
    v1 = conversation.version
    services.conversation_save(
        conversation=conversation, user=people["lena"], messages=GOOD, expected_version=v1
    )
    with pytest.raises(services.StaleEdit) as caught:
        services.conversation_save(
            conversation=conversation,
            user=people["lena"],
            messages=[*GOOD[:2], {"role": "assistant", "content": "five"}],
            expected_version=v1,
        )
    assert caught.value.current.messages == GOOD
    conversation.refresh_from_db()
    assert conversation.messages == GOOD  # the newer text was not overwritten


def test_unchanged_autosave_does_not_bump_the_version(project: Any, people: dict) -> None:
    conversation = services.conversation_create(project=project, user=people["lena"], messages=GOOD)
    same = services.conversation_save(
        conversation=conversation,
        user=people["lena"],
        messages=GOOD,
        expected_version=conversation.version,
    )
    assert same.version == conversation.version


def test_only_the_author_edits(project: Any, people: dict) -> None:
    conversation = services.conversation_create(project=project, user=people["lena"], messages=GOOD)
    with pytest.raises(services.LabelingRefused):
        services.conversation_save(
            conversation=conversation, user=people["leo"], messages=GOOD[:2], expected_version=1
        )


def test_submission_rules_are_explained(project: Any, people: dict) -> None:
    project.required_turns = 2
    project.save()
    conversation = services.conversation_create(project=project, user=people["lena"], messages=GOOD)
    with pytest.raises(services.InvalidConversation) as caught:
        services.conversation_submit(
            conversation=conversation, user=people["lena"], expected_version=conversation.version
        )
    assert any("at least 2 assistant turns" in p for p in caught.value.problems)
    empty = services.conversation_create(
        project=project, user=people["lena"], messages=[{"role": "user", "content": "hi"}]
    )
    with pytest.raises(services.InvalidConversation):
        services.conversation_submit(
            conversation=empty, user=people["lena"], expected_version=empty.version
        )
    assert empty.status == ConversationStatus.DRAFT


def test_review_approve_reject_and_edit(submitted: Any, people: dict) -> None:
    first = submitted()
    with pytest.raises(services.LabelingRefused, match="needs a comment"):
        services.review_decide(
            conversation=first,
            user=people["rita"],
            expected_version=first.version,
            review=services.ReviewInput("reject"),
        )
    services.review_decide(
        conversation=first,
        user=people["rita"],
        expected_version=first.version,
        review=services.ReviewInput("reject", "Show the steps."),
    )
    first.refresh_from_db()
    assert first.status == ConversationStatus.REJECTED
    # the author revises and resubmits; the edit is in the history
    revised = services.conversation_save(
        conversation=first,
        user=people["lena"],
        messages=[*GOOD[:2], {"role": "assistant", "content": "2 + 3: count on from 2: 5."}],
        expected_version=first.version,
    )
    revised = services.conversation_submit(
        conversation=revised, user=people["lena"], expected_version=revised.version
    )
    edited = [*GOOD[:2], {"role": "assistant", "content": "2 + 3: count on from 2 to get 5."}]
    review = services.review_decide(
        conversation=revised,
        user=people["rita"],
        expected_version=revised.version,
        review=services.ReviewInput("edit", "", edited),
    )
    revised.refresh_from_db()
    assert revised.status == ConversationStatus.APPROVED
    assert revised.messages == edited
    assert review.edit_distance > 0
    actions = list(revised.revisions.values_list("action", flat=True))
    assert actions == ["create", "submit", "reject", "edit", "submit", "review_edit"]
    assert Revision.objects.filter(action="review_edit").get().actor == people["rita"]


def test_reviewers_do_not_review_themselves(submitted: Any, people: dict) -> None:
    own = submitted(author="rita")
    with pytest.raises(services.LabelingRefused):
        services.review_decide(
            conversation=own,
            user=people["rita"],
            expected_version=own.version,
            review=services.ReviewInput("approve"),
        )
    assert services.review_next(user=people["rita"], project=own.project) is None


def test_review_queue_leases_to_one_reviewer(submitted: Any, people: dict) -> None:
    conversation = submitted()
    people["ada"].role = "reviewer"
    people["ada"].is_superuser = False
    people["ada"].save()
    assert services.review_next(user=people["rita"], project=conversation.project) == conversation
    assert services.review_next(user=people["ada"], project=conversation.project) is None


def test_editing_an_approved_conversation_sends_it_back(submitted: Any, people: dict) -> None:
    conversation = submitted()
    services.review_decide(
        conversation=conversation,
        user=people["rita"],
        expected_version=conversation.version,
        review=services.ReviewInput("approve"),
    )
    conversation.refresh_from_db()
    changed = services.conversation_save(
        conversation=conversation,
        user=people["lena"],
        messages=[*GOOD[:2], {"role": "assistant", "content": "Five."}],
        expected_version=conversation.version,
    )
    assert changed.status == ConversationStatus.SUBMITTED
    assert changed.revisions.last().action == Revision.Action.EDIT


def test_labeler_stats(submitted: Any, people: dict, project: Any) -> None:
    a, b, c = submitted(), submitted(), submitted(author="leo")
    services.review_decide(
        conversation=a, user=people["rita"], expected_version=a.version,
        review=services.ReviewInput("approve"),
    )  # fmt: skip
    services.review_decide(
        conversation=b, user=people["rita"], expected_version=b.version,
        review=services.ReviewInput("reject", "too short"),
    )  # fmt: skip
    services.review_decide(
        conversation=c, user=people["rita"], expected_version=c.version,
        review=services.ReviewInput("edit", "", [*GOOD[:2], {"role": "assistant", "content": "5"}]),
    )  # fmt: skip
    draft_turn = {"role": "assistant", "content": "2 + 3 = 5", "draft": {"text": "2+3=6"}}
    services.conversation_create(
        project=project, user=people["lena"], messages=[GOOD[1], draft_turn]
    )
    stats = {s.username: s for s in services.labeler_stats(project=project)}
    lena, leo = stats["lena"], stats["leo"]
    assert (lena.drafts, lena.submitted, lena.approved, lena.rejected) == (1, 2, 1, 1)
    assert lena.approval_rate == 0.5 and lena.model_drafted_turns == 1
    assert (leo.submitted, leo.approved, leo.edited_in_review) == (1, 1, 1)
    assert leo.mean_edit_chars == len("2 + 3 = 5.") - 1  # "2 + 3 = 5." → "5"
    assert Review.objects.count() == 3


def test_draft_edit_share() -> None:
    assert services.draft_edit_share({"content": "abc", "draft": {"text": "abc"}}) == 0
    assert services.draft_edit_share({"content": "xyz", "draft": {"text": "abc"}}) == 1
    assert services.draft_edit_share({"content": "abc"}) is None
