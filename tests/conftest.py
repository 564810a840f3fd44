"""Shared fixtures: one named person per role, logged-in clients, corpora from ../shared/data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.data import SHARED_DATA

if TYPE_CHECKING:
    from django.test import Client


# Two people for every role that owns objects, so "another user's object" can be tested.
# (Django is imported inside fixtures so that tests/core runs without it.)
PERSONAS = {
    "lena": "labeler",
    "leo": "labeler",
    "rita": "reviewer",
    "tom": "trainer",
    "tess": "trainer",
    "ada": "admin",
}


@pytest.fixture
def people(db: None) -> dict[str, Any]:
    from webapp.models import User

    made = {}
    for name, role in PERSONAS.items():
        user = User.objects.create_user(name, f"{name}@example.org", "pw-" + name, role=role)
        if role == "admin":
            user.is_staff = user.is_superuser = True
            user.save()
        made[name] = user
    return made


@pytest.fixture
def client_for(people: dict[str, Any]) -> Callable[[str | None], Client]:
    from django.test import Client

    def make(name: str | None) -> Client:
        client = Client()
        if name is not None:
            client.force_login(people[name])
        return client

    return make


@pytest.fixture
def shakespeare_slice(tmp_path: Path) -> Callable[[int], Path]:
    """The first ``n`` bytes of tinyshakespeare (read from ../shared/data, never copied in)."""

    def make(n: int = 200_000, name: str = "shakespeare.txt") -> Path:
        source = SHARED_DATA / "pretrain" / "tinyshakespeare.txt"
        text = source.read_bytes()[:n].decode("utf-8", errors="ignore")
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


@pytest.fixture
def start_worker(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start real worker subprocesses on the test database; all are stopped afterwards."""
    from tests.support.workers import WorkerProcess, purge_broker

    started: list[WorkerProcess] = []
    purge_broker()

    def start(name: str = "w1", wait: bool = True, **env: str) -> WorkerProcess:
        worker = WorkerProcess(name, tmp_path, **env)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a real BPE tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.core.reporting import RecordingReporter
    from training.core.tokenizer import TokenizerConfig, run

    folder = tmp_path_factory.mktemp("tiny")
    corpus = folder / "c.txt"
    corpus.write_text("\n\n".join(f"document number {i} about apples" for i in range(300)))
    tok_dir = folder / "tok"
    run(TokenizerConfig(vocab_size=512), {"corpus": [corpus]}, tok_dir, RecordingReporter())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=3,
        pad_token_id=1,
    )
    model_dir = folder / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (model_dir / name).write_bytes((tok_dir / name).read_bytes())
    return model_dir


@pytest.fixture
def tiny_checkpoint(tiny_model_dir: Path, people: dict[str, Any]) -> Any:
    """The tiny model registered as a checkpoint artifact."""
    import shutil

    from training import services

    staging = services.artifacts_root() / f"staging-{tiny_model_dir.stat().st_ino}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(tiny_model_dir, staging)
    return services.artifact_register_dir(
        source=staging,
        kind="checkpoint",
        name="tiny",
        run=None,
        parents=[],
        user=people["tom"],
        meta={"stage": "test"},
    )


@pytest.fixture
def corpus_and_tokenizer(people: dict[str, Any], shakespeare_slice: Callable[..., Path]) -> Any:
    """A Shakespeare corpus (100 kB) and a 512-token tokenizer trained on it, as artifacts."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from training import services, uploads
    from training.models import Artifact

    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("s.txt", shakespeare_slice(100_000).read_bytes()),
        name="shakespeare",
        user=people["tom"],
    )
    run = services.run_create(
        kind="tokenizer",
        config={"vocab_size": 512},
        inputs={"corpus": [corpus.pk]},
        user=people["tom"],
    )
    assert services.run_execute(run_id=run.pk) == "succeeded"
    return corpus, Artifact.objects.get(run=run)
