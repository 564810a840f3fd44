"""The whole pipeline in one go: data → corpus → tokenizer → pretrain → SFT → reward → PPO → GRPO →
evaluation, each stage an ordinary Orchard run launched with ``training.services.run_create`` on
the previous stage's output artifacts.

Runs execute either in worker processes (``mode="workers"``: this process only launches them and
polls the database, so they show up live in the web UI) or here, one after the other
(``mode="in-process"``: ``services.run_execute``, for tests and timing). Every stage prints one
line when it starts and one when it ends, with the metric that shows it did its job.

Data comes from a folder laid out like ``shared/data`` or is generated (:mod:`demo.data`), and
enters Orchard the way a person would bring it in: uploads validated by ``training.uploads``,
conversations, preferences and problems imported into labeling projects and exported as
snapshots.
"""

from __future__ import annotations

import io
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from django.db import close_old_connections, connection
from django.utils import timezone

from demo import data as demo_data
from training import services, uploads
from training.models import Artifact, Run, RunMetric, RunStatus

# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    """How much data and how many steps: ``quick`` for CI (seconds per stage), ``default`` for
    ``make demo`` (under 15 minutes on two CPU cores, every stage visibly improving)."""

    name: str
    web_pages: int  # generated web pages (without DATA web files)
    arithmetic_documents: int  # generated arithmetic practice documents, pretraining corpus
    dialogue_documents: int  # generated chat transcripts as plain text, pretraining corpus
    tinystories_bytes: int  # of DATA's TinyStories sample, pretraining corpus
    sft_stories: int  # generated "tell me a story" conversations
    hh_pairs: int  # HH-RLHF pairs imported from DATA (short ones only)
    hh_max_chars: int
    oasst: bool  # import DATA's OpenAssistant conversations
    problems: int  # generated one-digit arithmetic problems (train + held-out)
    sft_problem_share: float  # of the training problems that SFT sees; GRPO trains on all
    configs: dict[str, dict[str, Any]]


QUICK = Profile(
    name="quick",
    web_pages=120,
    arithmetic_documents=60,
    dialogue_documents=40,
    tinystories_bytes=150_000,
    sft_stories=8,
    hh_pairs=40,
    hh_max_chars=400,
    oasst=True,
    problems=60,
    sft_problem_share=0.6,
    configs={
        "corpus": {"workers": 1},
        "tokenizer": {"vocab_size": 512},
        "pretrain": {
            "preset": "tiny",
            "context_length": 64,
            "batch_size": 8,
            "max_steps": 60,
            "warmup_steps": 5,
            "learning_rate": 3e-3,
            "log_every": 5,
            "eval_every": 20,
            "eval_batches": 2,
            "sample_every": 0,
            "sample_max_new_tokens": 8,
            "checkpoint_every": 60,
        },
        "sft": {
            "max_steps": 30,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "max_length": 64,
            "log_every": 2,
            "eval_every": 15,
            "max_eval_conversations": 16,
            "sample_every": 0,
            "sample_max_new_tokens": 8,
            "save_every": 30,
        },
        "reward": {
            "max_steps": 8,
            "batch_size": 8,
            "max_length": 64,
            "log_every": 2,
            "eval_every": 4,
            "max_eval_pairs": 16,
            "save_every": 8,
        },
        "ppo": {
            "max_steps": 3,
            "batch_size": 4,
            "mini_batch_size": 2,
            "ppo_epochs": 1,
            "max_new_tokens": 8,
            "monitor_every": 3,
            "monitor_prompts": 4,
            "sample_every": 3,
            "save_every": 3,
        },
        "grpo": {
            "max_steps": 3,
            "num_generations": 4,
            "batch_size": 8,
            "max_completion_length": 8,
            "eval_every": 3,
            "eval_problems": 8,
            "eval_k": 2,
            "eval_samples": 2,
            "sample_every": 3,
            "save_every": 3,
        },
        "evaluate": {"max_problems": 8, "k": 2, "max_new_tokens": 8},
    },
)

DEFAULT = Profile(
    name="default",
    web_pages=1500,
    arithmetic_documents=1500,
    dialogue_documents=1000,
    tinystories_bytes=1_000_000,
    sft_stories=60,
    hh_pairs=300,
    hh_max_chars=500,
    oasst=True,
    problems=155,  # every one-digit sum and difference
    sft_problem_share=0.6,
    configs={
        "corpus": {},
        "tokenizer": {"vocab_size": 2048},
        "pretrain": {
            "preset": "tiny",
            "context_length": 128,
            "batch_size": 16,
            "max_steps": 600,
            "warmup_steps": 20,
            "learning_rate": 3e-3,
            "log_every": 10,
            "eval_every": 100,
            "eval_batches": 4,
            "sample_every": 200,
            "sample_prompts": "Once upon a time\n3 + 4 =",
            "sample_max_new_tokens": 24,
            "checkpoint_every": 200,
        },
        "sft": {
            "max_steps": 300,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "warmup_steps": 10,
            "max_length": 128,
            "log_every": 10,
            "eval_every": 100,
            "max_eval_conversations": 32,
            "sample_every": 100,
            "sample_prompts": ["Hello! Who are you?", "What is 3 + 4?", "What is 8 - 5?"],
            "sample_max_new_tokens": 64,
            "save_every": 300,
        },
        "reward": {
            "max_steps": 150,
            "batch_size": 16,
            "learning_rate": 5e-4,
            "max_length": 128,
            "log_every": 5,
            "eval_every": 50,
            "max_eval_pairs": 64,
            "save_every": 150,
        },
        "ppo": {
            "max_steps": 40,
            "batch_size": 16,
            "mini_batch_size": 8,
            "ppo_epochs": 2,
            "learning_rate": 5e-5,
            "kl_coef": 0.2,
            "max_new_tokens": 96,
            "monitor_every": 10,
            "monitor_prompts": 16,
            "sample_every": 5,
            "save_every": 40,
        },
        "grpo": {
            "max_steps": 250,
            "num_generations": 8,
            "batch_size": 64,
            "max_completion_length": 12,
            "learning_rate": 3e-5,
            "log_every": 5,
            "eval_every": 50,
            "eval_problems": 40,
            "eval_k": 4,
            "eval_samples": 8,
            "sample_every": 50,
            "save_every": 250,
        },
        "evaluate": {"max_problems": 40, "k": 4, "max_new_tokens": 12},
    },
)

PROFILES = {profile.name: profile for profile in (QUICK, DEFAULT)}
STAGES = ("corpus", "tokenizer", "pretrain", "sft", "reward", "ppo", "grpo", "evaluate")


# --------------------------------------------------------------------------- results


class DemoFailed(RuntimeError):
    """A stage failed, timed out or could not start; the message says which and where."""


@dataclass
class StageResult:
    stage: str
    run: Run
    artifact: Artifact | None
    seconds: float
    summary: str
    # The numbers the summary shows: "<metric>_first"/"<metric>_last" pairs and the like.
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    stages: dict[str, StageResult]
    final_checkpoint: Artifact
    chat_url: str
    seconds: float


@dataclass
class PreparedData:
    """What the data step brought into Orchard: artifact ids for the runs' inputs."""

    web_sources: list[int]
    extra_corpora: list[int]
    sft_snapshot: int
    preference_snapshots: list[int]  # for the reward model
    prompt_snapshot: int  # for PPO: the prompts of the conversation preferences
    problem_snapshot: int
    notes: list[str]


# --------------------------------------------------------------------------- the pipeline


def demo_user() -> Any:
    """The admin the runs belong to: ``admin`` from ``orchard_demo_users`` when it exists, else
    a new admin account without a usable password."""
    from webapp.models import User
    from webapp.roles import Role

    user, created = User.objects.get_or_create(
        username="admin", defaults={"role": Role.ADMIN, "is_staff": True, "is_superuser": True}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class DemoPipeline:
    def __init__(
        self,
        *,
        profile: Profile = DEFAULT,
        data_dir: Path | None = None,
        mode: str = "in-process",
        timeout: float = 3600.0,
        base_url: str = "http://127.0.0.1:8000",
        stdout: TextIO | None = None,
        seed: int = 0,
        worker_wait: float = 180.0,
        poll_interval: float = 1.0,
        progress_every: float = 30.0,
    ) -> None:
        if mode not in ("in-process", "workers"):
            raise ValueError(f"mode must be 'in-process' or 'workers', got {mode!r}")
        self.profile = profile
        self.data = demo_data.find_data(data_dir) if data_dir else None
        self.mode = mode
        self.timeout = timeout
        self.base_url = base_url.rstrip("/")
        self.stdout = stdout or sys.stdout
        self.seed = seed
        self.worker_wait = worker_wait
        self.poll_interval = poll_interval
        self.progress_every = progress_every
        self.label = f"demo {timezone.localtime():%Y-%m-%d %H:%M:%S}"
        self.deadline = math.inf
        self.user: Any = None
        self.results: dict[str, StageResult] = {}

    # --- output -------------------------------------------------------------------------

    def say(self, line: str) -> None:
        self.stdout.write(line + "\n")
        self.stdout.flush()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    # --- the chain ----------------------------------------------------------------------

    def run(self) -> DemoResult:
        started = time.monotonic()
        self.deadline = started + self.timeout
        self.user = demo_user()
        source = f"data from {self.data.root}" if self.data else "generated data"
        self.say(
            f"Orchard demo ({self.profile.name} profile, {source}, runs "
            + ("in worker processes" if self.mode == "workers" else "in this process")
            + f"); runs belong to user {self.user.get_username()!r}"
        )
        if self.mode == "workers":
            self.wait_for_worker()
        prepared = self.prepare()
        for note in prepared.notes:
            self.say(f"  {note}")

        corpus = self.stage(
            "corpus",
            "web pages → clean corpus (URL filter, extraction, language ID, quality, dedup)",
            {"sources": prepared.web_sources},
        )
        corpora = [corpus.artifact.pk, *prepared.extra_corpora]
        tokenizer = self.stage(
            "tokenizer",
            f"byte-level BPE on {len(corpora)} corpus artifact(s)",
            {"corpus": corpora},
        )
        pretrain_cfg = self.profile.configs["pretrain"]
        base = self.stage(
            "pretrain",
            f"{pretrain_cfg['preset']} Llama from scratch, {pretrain_cfg['max_steps']} steps "
            f"of {pretrain_cfg['batch_size']}x{pretrain_cfg['context_length']} tokens",
            {"corpus": corpora, "tokenizer": [tokenizer.artifact.pk]},
        )
        sft = self.stage(
            "sft",
            "fine-tune the base model on the approved conversations snapshot",
            {"base": [base.artifact.pk], "datasets": [prepared.sft_snapshot]},
        )
        reward = self.stage(
            "reward",
            f"reward model on {len(prepared.preference_snapshots)} preference snapshot(s), "
            "starting from the SFT model",
            {"base": [sft.artifact.pk], "datasets": prepared.preference_snapshots},
        )
        ppo = self.stage(
            "ppo",
            "PPO: the SFT model answers everyday requests, the reward model scores the replies",
            {
                "policy": [sft.artifact.pk],
                "reward": [reward.artifact.pk],
                "prompts": [prepared.prompt_snapshot],
            },
        )
        grpo = self.stage(
            "grpo",
            "GRPO on arithmetic problems checked by Orchard's number checker, from the PPO model",
            {"base": [ppo.artifact.pk], "problems": [prepared.problem_snapshot]},
        )
        checkpoints = [base, sft, ppo, grpo]
        self.stage(
            "evaluate",
            "base vs SFT vs PPO vs GRPO on held-out arithmetic problems",
            {
                "checkpoints": [r.artifact.pk for r in checkpoints],
                "problems": [prepared.problem_snapshot],
            },
            checkpoint_names=[r.stage for r in checkpoints],
        )
        final = grpo.artifact
        self.report_follow_up_evaluations([base, sft, reward, ppo, grpo])
        chat_url = self.url(f"/chat/?checkpoint={final.pk}")
        seconds = time.monotonic() - started
        self.say(f"Done in {format_seconds(seconds)}. Chat with the final checkpoint: {chat_url}")
        return DemoResult(
            stages=self.results, final_checkpoint=final, chat_url=chat_url, seconds=seconds
        )

    def report_follow_up_evaluations(self, stages: list[StageResult]) -> None:
        """The figures of the evaluations each training run launched by itself (those that have
        finished: in-process runs leave theirs to a worker)."""
        from training.evaluations import FIGURES, evaluations_of

        for result in stages:
            for run in evaluations_of(result.artifact):
                if run.status != RunStatus.SUCCEEDED or len(run.inputs.get("checkpoints", [])) > 1:
                    continue  # the side-by-side stage above is not a follow-up
                row = (run.result.get("checkpoints") or [{}])[0]
                shown = [
                    f"{f.label} {f.text(row[f.key])}" for f in FIGURES if row.get(f.key) is not None
                ]
                if shown:
                    self.say(
                        f"      evaluation of {result.stage} (run #{run.pk}): {', '.join(shown)}"
                    )

    # --- data -----------------------------------------------------------------------------

    def prepare(self) -> PreparedData:
        """Bring the data in: uploads, labeling projects, snapshots."""
        from labeling import data as labeling_data
        from labeling import problem_bank, ranking
        from labeling import services as labeling
        from labeling.models import ConversationStatus
        from training.core.problems import read_problems

        started = time.monotonic()
        profile, folder, seed = self.profile, self.data, self.seed
        self.say(
            "[data] "
            + (
                f"reading {folder.root}: {', '.join(folder.describe())}"
                if folder
                else "generating stories, web pages, arithmetic, conversations and preferences"
            )
        )
        notes: list[str] = []

        # web pages for the corpus stage
        web_sources = []
        if folder and folder.warcs:
            for path in folder.warcs:
                web_sources.append(self._upload_file(uploads.WEBDATA, path).pk)
        else:
            pages = demo_data.web_pages_zip(profile.web_pages, seed)
            web_sources.append(self._upload(uploads.WEBDATA, "demo-web-pages.zip", pages).pk)

        # more pretraining text, uploaded as corpora
        extra = []
        if folder and folder.pretrain:
            text = demo_data.whole_documents(folder.pretrain, profile.tinystories_bytes)
            extra.append(self._upload(uploads.CORPUS, folder.pretrain.name, text).pk)
        generated = {
            "demo-arithmetic.txt": demo_data.arithmetic_documents(
                profile.arithmetic_documents, seed
            ),
            "demo-dialogues.txt": demo_data.dialogue_documents(profile.dialogue_documents, seed),
        }
        for filename, documents in generated.items():
            content = demo_data.corpus_text(documents)
            extra.append(self._upload(uploads.CORPUS, filename, content).pk)

        # problems first: their held-out split must stay out of every training set
        problems_project = labeling.project_create(
            user=self.user,
            name=f"Arithmetic problems ({self.label})",
            description="One-digit sums and differences for GRPO and the evaluation.",
        )
        problem_bank.problems_generate(
            project=problems_project, user=self.user, count=profile.problems, difficulty=1,
            seed=seed,
        )  # fmt: skip
        problems = problem_bank.problem_snapshot_create(
            project=problems_project, user=self.user, name=f"Arithmetic ({self.label})",
            validation_fraction=0.25,
        )  # fmt: skip
        split = read_problems(problems.artifact.abspath())
        train_problems = [_problem_record(p) for p in split["train"]]
        notes.append(
            f"problems: {len(split['train'])} for training (SFT sees "
            f"{round(len(split['train']) * profile.sft_problem_share)}, GRPO all), "
            f"{len(split['validation'])} held out for evaluation (in no training set)"
        )

        # conversations for SFT
        sft_project = labeling.project_create(
            user=self.user,
            name=f"Assistant conversations ({self.label})",
            description="Identity, I-don't-know, arithmetic, small talk and stories.",
        )
        identity = labeling_data.seed_identity(
            project=sft_project, user=self.user, approve=True, **demo_data.IDENTITY
        )
        idk = labeling_data.seed_idk(
            project=sft_project,
            user=self.user,
            questions=demo_data.IDK_QUESTIONS,
            answer=demo_data.IDK_ANSWER,
            approve=True,
        )
        sft_problems = train_problems[: round(len(train_problems) * profile.sft_problem_share)]
        rows = demo_data.chat_conversations(sft_problems, profile.sft_stories, seed)
        generated = labeling_data.import_conversations(
            project=sft_project,
            user=self.user,
            uploaded=io.BytesIO(demo_data.jsonl(rows)),
            fmt="auto",
            status=ConversationStatus.APPROVED,
            tags=["demo"],
        )
        counts = (
            f"{len(identity)} identity, {len(idk)} I-don't-know, {generated.imported} generated"
        )
        if folder and folder.conversations and profile.oasst:
            with open(folder.conversations, "rb") as handle:
                oasst = labeling_data.import_conversations(
                    project=sft_project,
                    user=self.user,
                    uploaded=handle,
                    fmt="oasst",
                    status=ConversationStatus.APPROVED,
                    tags=["oasst"],
                )
            counts += f", {oasst.imported} OpenAssistant"
        sft_snapshot = labeling_data.snapshot_create(
            project=sft_project, user=self.user, name=f"Conversations ({self.label})"
        )
        notes.append(f"SFT conversations: {counts}")

        # preferences for the reward model (and prompts for PPO)
        pref_project = labeling.project_create(
            user=self.user,
            name=f"Arithmetic preferences ({self.label})",
            description="Right answers over wrong results and miscopied questions.",
        )
        arithmetic_pairs = demo_data.arithmetic_preference_pairs(train_problems, seed)
        ranking.import_preferences(
            project=pref_project, uploaded=io.BytesIO(demo_data.jsonl(arithmetic_pairs)), fmt="hh"
        )
        arithmetic_prefs = ranking.preference_snapshot_create(
            project=pref_project, user=self.user, name=f"Arithmetic preferences ({self.label})"
        )
        chat_project = labeling.project_create(
            user=self.user,
            name=f"Conversation preferences ({self.label})",
            description="Helpful over rude, off-topic or babbling replies; PPO's prompts.",
        )
        chat_pairs = demo_data.conversation_preference_pairs(seed)
        ranking.import_preferences(
            project=chat_project, uploaded=io.BytesIO(demo_data.jsonl(chat_pairs)), fmt="hh"
        )
        prompts = ranking.preference_snapshot_create(
            project=chat_project, user=self.user, name=f"Conversation preferences ({self.label})"
        )
        pairs = arithmetic_pairs + chat_pairs
        preference_snapshots = [arithmetic_prefs.artifact.pk, prompts.artifact.pk]
        pref_counts = f"{len(pairs)} generated pairs"
        if folder and folder.preferences and profile.hh_pairs:
            hh_project = labeling.project_create(
                user=self.user,
                name=f"HH-RLHF preferences ({self.label})",
                description="Anthropic HH-RLHF harmless-base test pairs (red-team data).",
            )
            lines = demo_data.hh_lines(folder.preferences, profile.hh_pairs, profile.hh_max_chars)
            imported, _problems = ranking.import_preferences(
                project=hh_project, uploaded=io.BytesIO(lines), fmt="hh"
            )
            if imported:
                hh = ranking.preference_snapshot_create(
                    project=hh_project, user=self.user, name=f"HH-RLHF ({self.label})"
                )
                preference_snapshots.append(hh.artifact.pk)
                pref_counts += f", {imported} HH-RLHF pairs"
        notes.append(f"preferences: {pref_counts}")
        self.say(f"[data] ready in {format_seconds(time.monotonic() - started)}")
        return PreparedData(
            web_sources=web_sources,
            extra_corpora=extra,
            sft_snapshot=sft_snapshot.artifact.pk,
            preference_snapshots=preference_snapshots,
            prompt_snapshot=prompts.artifact.pk,
            problem_snapshot=problems.artifact.pk,
            notes=notes,
        )

    def _upload(self, fmt: uploads.DataFormat, filename: str, content: bytes) -> Artifact:
        return uploads.store(
            fmt=fmt,
            filename=filename,
            chunks=[content],
            name=f"{filename} ({self.label})",
            user=self.user,
            origin="demo",
        )

    def _upload_file(self, fmt: uploads.DataFormat, path: Path) -> Artifact:
        def chunks() -> Any:
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    yield block

        return uploads.store(
            fmt=fmt,
            filename=path.name,
            chunks=chunks(),
            name=f"{path.name} ({self.label})",
            user=self.user,
            origin=f"demo:{path}",
        )

    # --- one stage ------------------------------------------------------------------------

    def stage(
        self, kind: str, description: str, inputs: dict[str, list[int]], **summary_args: Any
    ) -> StageResult:
        number = STAGES.index(kind) + 1
        config = dict(self.profile.configs.get(kind, {}))
        run = services.run_create(kind=kind, config=config, inputs=inputs, user=self.user)
        self.say(
            f"[{number}/{len(STAGES)}] {kind}: {description} "
            f"(run #{run.pk}, {self.url(run.get_absolute_url())})"
        )
        started = time.monotonic()
        if self.mode == "in-process":
            self._execute_here(run)
        self._wait(run, kind)
        run.refresh_from_db()
        seconds = time.monotonic() - started
        if run.status != RunStatus.SUCCEEDED:
            reason = run.error or run.message or run.status
            raise DemoFailed(
                f"{kind} run #{run.pk} {run.status}: {reason}\n"
                f"  see {self.url(run.get_absolute_url())}"
            )
        artifact = Artifact.objects.filter(run=run).first()
        if artifact is None:
            raise DemoFailed(f"{kind} run #{run.pk} succeeded without an output artifact")
        summary, figures = SUMMARIES[kind](run, **summary_args)
        result = StageResult(kind, run, artifact, seconds, summary, figures)
        if self.mode == "in-process":
            self._evaluate_here(artifact)
        self.results[kind] = result
        self.say(f"[{number}/{len(STAGES)}] {kind}: {summary} ({format_seconds(seconds)})")
        return result

    def _execute_here(self, run: Run) -> None:
        """Execute the run in this process; a worker that claimed it first is waited for."""
        remaining = self.deadline - time.monotonic()
        timer = threading.Timer(max(0.0, remaining), _request_cancel, args=(run.pk,))
        timer.daemon = True
        timer.start()
        try:
            services.run_execute(run_id=run.pk)
        finally:
            timer.cancel()
        if time.monotonic() > self.deadline:
            raise DemoFailed(
                f"{run.kind} run #{run.pk} did not finish within the demo's time limit "
                f"({format_seconds(self.timeout)}) and was cancelled; "
                f"see {self.url(run.get_absolute_url())}"
            )

    def _evaluate_here(self, artifact: Artifact) -> None:
        """Run the evaluation the stage launched by itself, as a worker would have."""
        from training.evaluations import evaluations_of

        for run in evaluations_of(artifact):
            if run.status == RunStatus.QUEUED:
                self._execute_here(run)

    def _wait(self, run: Run, kind: str) -> None:
        """Poll the database until the run is over, with a progress line now and then."""
        last_report = time.monotonic()
        while True:
            close_old_connections()
            current = Run.objects.get(pk=run.pk)
            if current.is_terminal:
                return
            now = time.monotonic()
            if now > self.deadline:
                _request_cancel(run.pk)
                raise DemoFailed(
                    f"{kind} run #{run.pk} did not finish within the demo's time limit "
                    f"({format_seconds(self.timeout)}); cancelled. "
                    f"See {self.url(run.get_absolute_url())}"
                )
            if now - last_report >= self.progress_every:
                last_report = now
                self.say(f"      {kind}: {_progress_line(current)}")
            time.sleep(self.poll_interval)

    def wait_for_worker(self) -> None:
        from training.workers import live_workers

        deadline = time.monotonic() + self.worker_wait
        announced = False
        while not live_workers():
            if time.monotonic() > deadline:
                raise DemoFailed(
                    f"no worker came online within {format_seconds(self.worker_wait)}: start one "
                    "with `make worker` (or run the demo with --in-process)"
                )
            if not announced:
                self.say("waiting for a worker to come online...")
                announced = True
            time.sleep(1.0)
            close_old_connections()


def _request_cancel(run_id: int) -> None:
    """Ask a queued or running run to stop (from a timer thread too: its own connection)."""
    try:
        Run.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
            status=RunStatus.CANCELLED, cancel_requested=True, message="cancelled: demo timeout"
        )
        Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(cancel_requested=True)
    finally:
        if threading.current_thread() is not threading.main_thread():
            connection.close()


def _progress_line(run: Run) -> str:
    if run.status == RunStatus.QUEUED:
        return "queued, waiting for a worker"
    done = f"step {run.step}" + (f"/{run.total_steps}" if run.total_steps else "")
    pct = f" ({run.progress:.0%})" if run.total_steps else ""
    return f"{done}{pct} {run.message}".rstrip()


def _problem_record(row: dict[str, Any]) -> dict[str, Any]:
    question = row.get("question") or row["prompt"][-1]["content"]
    return {"question": question, "answer": str(row["answer"])}


# --------------------------------------------------------------------------- summaries


def series(run: Run, name: str) -> list[float]:
    """A metric's values in step order."""
    return list(
        RunMetric.objects.filter(run=run, name=name)
        .order_by("step", "id")
        .values_list("value", flat=True)
    )


def first_last(run: Run, name: str) -> tuple[float | None, float | None]:
    values = [v for v in series(run, name) if math.isfinite(v)]
    return (values[0], values[-1]) if values else (None, None)


def smoothed_first_last(run: Run, name: str) -> tuple[float | None, float | None]:
    """Mean of the first and of the last few values (a fifth of them, at most 5): RL rewards
    are measured on a handful of samples per step, so single steps are noisy."""
    values = [v for v in series(run, name) if math.isfinite(v)]
    if not values:
        return None, None
    window = max(1, min(5, len(values) // 5))
    return sum(values[:window]) / window, sum(values[-window:]) / window


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def _moved(label: str, first: Any, last: Any, digits: int = 2, unit: str = "") -> str:
    return f"{label} {_num(first, digits)} → {_num(last, digits)}{unit}"


def _corpus_summary(run: Run) -> tuple[str, dict]:
    result = run.result
    kept, total = result.get("documents_kept", 0), result.get("documents_in", 0)
    drops: dict[str, int] = {}
    for row in result.get("funnel", []):
        if row.get("dropped"):
            drops[row["stage"]] = row["dropped"]
    top = ", ".join(f"{k} {v}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1])[:4])
    text = (
        f"kept {kept} of {total} documents ({kept / max(total, 1):.0%}), "
        f"{result.get('characters', 0) / 1e6:.2f} M characters of clean text"
        + (f"; dropped by {top}" if top else "")
    )
    return text, {"documents_in": total, "documents_kept": kept, "dropped": drops}


def _tokenizer_summary(run: Run) -> tuple[str, dict]:
    result = run.result
    bpt = result.get("bytes_per_token")
    text = (
        f"{result.get('vocab_size')} tokens; held-out text compresses to "
        f"{_num(bpt)} bytes/token (raw bytes: 1.00)"
    )
    return text, {"bytes_per_token": bpt, "vocab_size": result.get("vocab_size")}


def _pretrain_summary(run: Run) -> tuple[str, dict]:
    loss_first, loss_last = first_last(run, "loss")
    val_first, val_last = first_last(run, "val_loss")
    result = run.result
    text = (
        _moved("loss", loss_first, loss_last)
        + f" in {result.get('steps')} steps"
        + f", held-out {_moved('loss', val_first, val_last)}"
        + f" ({_num(result.get('val_bpb'))} bits/byte)"
        + f", {result.get('parameters', 0) / 1e6:.2f}M parameters"
    )
    return text, {
        "loss_first": loss_first,
        "loss_last": loss_last,
        "val_loss_first": val_first,
        "val_loss_last": val_last,
    }


def _sft_summary(run: Run) -> tuple[str, dict]:
    result = run.result
    first, last = first_last(run, "train/loss")
    first = result.get("train_loss_first", first) if first is None else first
    last = result.get("train_loss_last", last) if last is None else last
    val_first, val_last = first_last(run, "val/loss")
    stop_rate = result.get("stop_rate")
    text = (
        _moved("assistant-token loss", first, last)
        + f" in {result.get('steps')} steps on {result.get('conversations')} conversations"
        + (f", held-out {_moved('loss', val_first, val_last)}" if val_first is not None else "")
        + (f", replies ending their turn {stop_rate:.0%}" if stop_rate is not None else "")
    )
    return text, {
        "loss_first": first,
        "loss_last": last,
        "val_loss_first": val_first,
        "val_loss_last": val_last,
        "stop_rate": stop_rate,
    }


def _reward_summary(run: Run) -> tuple[str, dict]:
    result = run.result
    first, last = first_last(run, "train/loss")
    acc_first, acc_last = first_last(run, "train/accuracy")
    val_acc = result.get("val_accuracy")
    text = (
        _moved("pairwise loss", first, last)
        + f", training accuracy {_num(acc_first)} → {_num(acc_last)}"
        + f", held-out accuracy {_num(val_acc)} (chance 0.50) on "
        + f"{result.get('validation_pairs')} pairs"
    )
    return text, {
        "loss_first": first,
        "loss_last": last,
        "accuracy_first": acc_first,
        "accuracy_last": acc_last,
        "val_accuracy": val_acc,
    }


def _ppo_summary(run: Run) -> tuple[str, dict]:
    reward_first, reward_last = smoothed_first_last(run, "reward/mean")
    monitor_first, monitor_last = first_last(run, "monitor/train_rm")
    kl_first, kl_last = first_last(run, "kl")
    steps = run.result.get("steps", run.step)
    text = (
        _moved("reward-model score of greedy replies", monitor_first, monitor_last)
        + f" to held-out prompts, of sampled replies {_num(reward_first)} → {_num(reward_last)}"
        + f" in {steps} steps (KL to the SFT model {_num(kl_last)} nats)"
    )
    return text, {
        "monitor_first": monitor_first,
        "monitor_last": monitor_last,
        "reward_first": reward_first,
        "reward_last": reward_last,
        "kl_last": kl_last,
    }


def _grpo_summary(run: Run) -> tuple[str, dict]:
    reward_first, reward_last = smoothed_first_last(run, "reward/mean")
    pass_first, pass_last = first_last(run, "val/pass@1")
    accuracy_first, accuracy_last = first_last(run, "val/accuracy")
    steps = run.result.get("steps", run.step)
    text = (
        _moved("share of correct sampled answers", reward_first, reward_last)
        + f" in {steps} steps; held-out: sampled {_num(accuracy_first)} → "
        + f"{_num(accuracy_last)}, greedy pass@1 {_num(pass_first)} → {_num(pass_last)}"
    )
    return text, {
        "reward_first": reward_first,
        "reward_last": reward_last,
        "pass1_first": pass_first,
        "pass1_last": pass_last,
        "accuracy_first": accuracy_first,
        "accuracy_last": accuracy_last,
    }


def _evaluate_summary(run: Run, checkpoint_names: list[str] | None = None) -> tuple[str, dict]:
    rows = run.result.get("checkpoints", [])
    names = checkpoint_names or [f"checkpoint {i}" for i in range(len(rows))]
    scores = {}
    for row in rows:
        index = row.get("checkpoint", 0)
        name = names[index] if index < len(names) else f"checkpoint {index}"
        scores[name] = {key: row.get(key) for key in ("pass@1", "pass@k", "accuracy")}
    shown = ", ".join(
        f"{name} {_num(s['pass@1'])}/{_num(s['accuracy'])}" for name, s in scores.items()
    )
    problems = run.result.get("problems")
    return (
        f"on {problems} held-out problems, greedy pass@1 / sampled accuracy: {shown}",
        {"scores": scores},
    )


SUMMARIES: dict[str, Callable[..., tuple[str, dict]]] = {
    "corpus": _corpus_summary,
    "tokenizer": _tokenizer_summary,
    "pretrain": _pretrain_summary,
    "sft": _sft_summary,
    "reward": _reward_summary,
    "ppo": _ppo_summary,
    "grpo": _grpo_summary,
    "evaluate": _evaluate_summary,
}
