"""The task queue under real concurrency: 20 labelers in 20 threads, each on its own connection.

However the requests interleave, an item is never handed out beyond its overlap, nobody gets the
same item twice, ``taken`` always equals the slots actually held (active or submitted), and no
request fails: on SQLite (IMMEDIATE transactions serialise writers; "database is locked" would be
a bug) and on PostgreSQL (READ COMMITTED: the conditional UPDATE re-checks the row it waited for).
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from labeling import services
from labeling.models import Assignment, AssignmentStatus, Conversation, Item, TaskKind

pytestmark = pytest.mark.django_db(transaction=True)

LABELERS = 20
ITEMS = 10
OVERLAP = 3
HOLDING = (AssignmentStatus.ACTIVE, AssignmentStatus.DONE)  # what ``taken`` counts


@dataclass
class Outcome:
    """What the threads saw: every claim (user id, item id) and every exception, with its trace."""

    claims: list[tuple[int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished: set[int] = field(default_factory=set)  # users whose last ask got None
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def crowd() -> tuple[Any, list[Any]]:
    """A project with overlap 3 and 10 write tasks, and 20 labelers."""
    from webapp.models import User

    owner = User.objects.create_user("owner", "owner@example.org", "pw", role="trainer")
    project = services.project_create(
        user=owner, name="Race", system_prompts=[], required_turns=1, overlap=OVERLAP
    )
    services.items_add(project=project, kind=TaskKind.WRITE, count=ITEMS)
    labelers = [
        User.objects.create_user(f"labeler{i:02}", f"l{i}@example.org", "pw", role="labeler")
        for i in range(LABELERS)
    ]
    return project, labelers


def submit(assignment: Assignment, user: Any, text: str) -> None:
    """Do the task the way the editor does: open it, write a reply, save, submit."""
    conversation = services.assignment_conversation(assignment=assignment)
    saved = services.conversation_save(
        conversation=conversation,
        user=user,
        messages=[
            {"role": "user", "content": f"Question from {user.username}"},
            {"role": "assistant", "content": text},
        ],
        expected_version=conversation.version,
    )
    services.conversation_submit(conversation=saved, user=user, expected_version=saved.version)


def expire(assignment: Assignment) -> None:
    Assignment.objects.filter(pk=assignment.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def run_crowd(
    project: Any, labelers: list[Any], work: Callable[[int, Any, Any, Outcome], None]
) -> Outcome:
    """One thread per labeler, all started at once; each runs ``work`` on its own connection."""
    outcome = Outcome()
    barrier = threading.Barrier(len(labelers))

    def thread_main(index: int, user: Any) -> None:
        try:
            barrier.wait(timeout=30)
            work(index, user, project, outcome)
        except BaseException:  # every failure, assertions included, is reported by the test
            with outcome.lock:
                outcome.errors.append(f"{user.username}: {traceback.format_exc()}")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=thread_main, args=(i, user), name=f"{user.username}-{i}")
        for i, user in enumerate(labelers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not [t.name for t in threads if t.is_alive()], "a labeler is stuck"
    return outcome


def ask_until_empty(
    user: Any, project: Any, outcome: Outcome, handle: Callable[[Assignment, int], None]
) -> None:
    """Ask for tasks until the queue says there are none; ``handle`` finishes each one."""
    for step in range(ITEMS * 3 + 5):  # far more than anyone can get: a loop here is a bug
        assignment = services.next_task(user=user, project=project)
        if assignment is None:
            with outcome.lock:
                outcome.finished.add(user.pk)
            return
        assert assignment.labeler_id == user.pk
        assert assignment.status == AssignmentStatus.ACTIVE
        with outcome.lock:
            outcome.claims.append((user.pk, assignment.item_id))
        handle(assignment, step)
    raise AssertionError(f"{user.username} was still given tasks after {step + 1} asks")


def assert_queue_consistent(project: Any) -> None:
    """The invariants, checked against the rows themselves."""
    pairs = Counter(Assignment.objects.values_list("item_id", "labeler_id"))
    assert pairs and max(pairs.values()) == 1, "an (item, labeler) pair was assigned twice"
    for item in Item.objects.filter(project=project):
        holding = item.assignments.filter(status__in=HOLDING).count()
        assert item.taken == holding, f"item {item.pk}: taken {item.taken}, holding {holding}"
        assert 0 <= item.taken <= item.overlap == OVERLAP
        done = item.assignments.filter(status=AssignmentStatus.DONE).count()
        assert done <= item.overlap, f"item {item.pk} has {done} submissions for {item.overlap}"


def test_twenty_labelers_never_overfill_an_item(crowd: tuple[Any, list[Any]]) -> None:
    project, labelers = crowd
    started = time.monotonic()

    def work(index: int, user: Any, project: Any, outcome: Outcome) -> None:
        ask_until_empty(
            user, project, outcome, lambda a, step: submit(a, user, f"answer {a.item_id}")
        )

    outcome = run_crowd(project, labelers, work)

    assert not outcome.errors, "\n".join(outcome.errors)
    assert outcome.finished == {u.pk for u in labelers}  # everyone stopped on "none left"
    claims = Counter(outcome.claims)
    assert max(claims.values()) == 1, "a labeler was handed the same item twice"
    assert len(outcome.claims) == min(ITEMS * OVERLAP, LABELERS * ITEMS)
    assert Assignment.objects.count() == ITEMS * OVERLAP
    assert set(Assignment.objects.values_list("status", flat=True)) == {AssignmentStatus.DONE}
    assert_queue_consistent(project)
    assert set(Item.objects.values_list("taken", flat=True)) == {OVERLAP}
    per_item = Counter(item for _, item in outcome.claims)
    assert set(per_item.values()) == {OVERLAP}
    # Every claim became exactly one submitted conversation by the person who claimed it.
    submitted = Counter(
        Conversation.objects.filter(project=project, status="submitted").values_list(
            "author_id", "assignment__item_id"
        )
    )
    assert submitted == Counter(outcome.claims)
    assert time.monotonic() - started < 20


def test_expired_leases_free_slots_without_overfilling(crowd: tuple[Any, list[Any]]) -> None:
    """A third of the labelers let leases run out: some walk away, some come back for another
    task (maybe the same item again), some submit late after others took the freed slot. The
    rest keep working and pick up what was freed."""
    project, labelers = crowd
    started = time.monotonic()

    def work(index: int, user: Any, project: Any, outcome: Outcome) -> None:
        role = index % 6

        def handle(assignment: Assignment, step: int) -> None:
            if role == 0 and step == 0:  # walks away: the lease runs out, the thread ends
                expire(assignment)
                raise WalkedAway
            if role == 1 and step < 2:  # lets two leases lapse, then asks again
                expire(assignment)
                return
            if role == 2 and step == 0:  # writes slowly: the lease lapses before submitting
                conversation = services.assignment_conversation(assignment=assignment)
                expire(assignment)
                time.sleep(0.05)  # others may release and take the slot meanwhile
                saved = services.conversation_save(
                    conversation=conversation,
                    user=user,
                    messages=[
                        {"role": "user", "content": "late question"},
                        {"role": "assistant", "content": "late answer"},
                    ],
                    expected_version=conversation.version,
                )
                services.conversation_submit(
                    conversation=saved, user=user, expected_version=saved.version
                )
                return
            submit(assignment, user, f"answer {assignment.item_id}")

        with contextlib.suppress(WalkedAway):
            ask_until_empty(user, project, outcome, handle)

    outcome = run_crowd(project, labelers, work)

    assert not outcome.errors, "\n".join(outcome.errors)
    assert_queue_consistent(project)
    # Whatever the walkers left behind goes back once, and the queue refills it.
    services.release_expired(project=project)
    assert_queue_consistent(project)
    walked = {u.pk for i, u in enumerate(labelers) if i % 6 == 0}
    for user in (u for u in labelers if u.pk not in walked):
        while (assignment := services.next_task(user=user, project=project)) is not None:
            submit(assignment, user, "sweep")
    assert_queue_consistent(project)
    assert set(Item.objects.values_list("taken", flat=True)) == {OVERLAP}
    statuses = Counter(Assignment.objects.values_list("status", flat=True))
    assert statuses[AssignmentStatus.DONE] == ITEMS * OVERLAP
    assert statuses[AssignmentStatus.ACTIVE] == 0
    assert statuses[AssignmentStatus.EXPIRED] + statuses[AssignmentStatus.SKIPPED] > 0
    # The walkers' slots were freed and refilled by others.
    assert not Assignment.objects.filter(
        labeler_id__in=walked, status=AssignmentStatus.DONE
    ).exists()
    assert time.monotonic() - started < 20


def test_one_labeler_in_several_tabs(crowd: tuple[Any, list[Any]]) -> None:
    """Five people with four tabs each, all asking at once: the tabs share one task, never
    take two slots of one item, and a tab that submits a lapsed task while another tab takes the
    same item again neither deadlocks (PostgreSQL) nor counts the slot twice."""
    project, labelers = crowd
    started = time.monotonic()
    tabs = [user for user in labelers[:5] for _ in range(4)]

    def work(index: int, user: Any, project: Any, outcome: Outcome) -> None:
        late = index % 4 == 0

        def handle(assignment: Assignment, step: int) -> None:
            conversation = services.assignment_conversation(assignment=assignment)
            if late and step < 3:
                expire(assignment)  # the other tabs release it and may take the item again
            try:
                saved = services.conversation_save(
                    conversation=conversation,
                    user=user,
                    messages=[
                        {"role": "user", "content": f"tab {index}"},
                        {"role": "assistant", "content": f"answer {assignment.item_id}"},
                    ],
                    expected_version=conversation.version,
                )
                services.conversation_submit(
                    conversation=saved, user=user, expected_version=saved.version
                )
            except services.StaleEdit:
                pass  # another tab saved first: this one reloads and asks again

        ask_until_empty(user, project, outcome, handle)

    outcome = run_crowd(project, tabs, work)

    assert not outcome.errors, "\n".join(outcome.errors)
    assert outcome.finished == {u.pk for u in labelers[:5]}
    assert_queue_consistent(project)
    assert set(Item.objects.values_list("taken", flat=True)) == {OVERLAP}
    assert Assignment.objects.filter(status=AssignmentStatus.DONE).count() == ITEMS * OVERLAP
    assert not Assignment.objects.filter(status=AssignmentStatus.ACTIVE).exists()
    assert time.monotonic() - started < 20


def test_lapsed_task_submitted_while_another_tab_takes_it_again(
    crowd: tuple[Any, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrowest race, widened on purpose: one tab submits a task whose lease ran out while
    another tab of the same labeler takes that item again. UPDATEs are slowed down so that the
    submitting tab holds the assignment before the other tab asks for it, and asks for the item
    only after the other tab could have locked it: unless both take their locks in the same
    order (assignment, then item), PostgreSQL aborts one with "deadlock detected"."""
    from django.db.models.query import QuerySet

    project, labelers = crowd
    user = labelers[0]
    assignment = services.next_task(user=user, project=project)
    conversation = services.assignment_conversation(assignment=assignment)
    saved = services.conversation_save(
        conversation=conversation,
        user=user,
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        expected_version=conversation.version,
    )
    expire(assignment)
    assert services.release_expired(project=project) == 1

    update = QuerySet.update

    def slow_update(self: QuerySet, **kwargs: Any) -> int:
        if not threading.current_thread().name.endswith("-0"):
            time.sleep(0.1)  # the tab asking for a task
        elif self.model is Item:
            time.sleep(0.3)  # the submitting tab, between locking the assignment and the item
        return update(self, **kwargs)

    monkeypatch.setattr(QuerySet, "update", slow_update)
    claimed: list[Assignment | None] = []

    def work(index: int, user: Any, project: Any, outcome: Outcome) -> None:
        if index == 0:
            services.conversation_submit(
                conversation=saved, user=user, expected_version=saved.version
            )
        else:
            claimed.append(services.next_task(user=user, project=project))

    outcome = run_crowd(project, [user, user], work)
    monkeypatch.undo()

    assert not outcome.errors, "\n".join(outcome.errors)
    assert_queue_consistent(project)
    lapsed = Assignment.objects.get(pk=assignment.pk)
    assert lapsed.status == AssignmentStatus.DONE  # the slot was free: the late work counts
    assert claimed and claimed[0] is not None
    # The other tab either reopened the same task (then finished by the submit) or got the
    # next item; never a second row for the same item.
    assert Assignment.objects.filter(labeler=user).count() == 1 + (claimed[0].pk != assignment.pk)


class WalkedAway(Exception):
    pass
