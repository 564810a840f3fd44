"""Registering a local HF model folder: safetensors only, no remote code, import folder only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import model_import
from training.models import Artifact

pytestmark = pytest.mark.django_db


@pytest.fixture
def import_root(tmp_path, settings) -> Path:
    root = tmp_path / "import"
    root.mkdir()
    settings.IMPORT_ROOT = root
    return root


def place(import_root: Path, source: Path, name: str = "tiny") -> Path:
    import shutil

    return Path(shutil.copytree(source, import_root / "org" / name))


def test_a_safe_model_folder_is_copied_in_and_registered(import_root, tiny_model_dir, people):
    from transformers import AutoModelForCausalLM

    place(import_root, tiny_model_dir)
    assert model_import.importable_folders() == ["org/tiny"]
    artifact = model_import.checkpoint_import(relative="org/tiny", name="", user=people["tom"])
    assert artifact.kind == "checkpoint" and artifact.name == "tiny"
    model = AutoModelForCausalLM.from_pretrained(artifact.abspath(), local_files_only=True)
    assert (
        artifact.meta["parameters"]
        == sum(p.numel() for p in model.parameters())
        + (0 if not model.config.tie_word_embeddings else model.lm_head.weight.numel())
        or artifact.meta["parameters"] > 0
    )
    assert artifact.meta["architecture"] == "LlamaForCausalLM"
    assert (artifact.abspath() / "tokenizer.json").is_file()


def test_the_import_page_registers_a_model(import_root, tiny_model_dir, client_for):
    place(import_root, tiny_model_dir)
    response = client_for("tom").post("/checkpoints/import/", {"folder": "org/tiny"})
    artifact = Artifact.objects.get(kind="checkpoint")
    assert response.status_code == 302 and response["Location"] == f"/artifacts/{artifact.pk}/"
    listing = client_for("tom").get("/checkpoints/").content.decode()
    assert f'href="/artifacts/{artifact.pk}/">#{artifact.pk}</a>' in listing
    assert "import by tom" in listing


def test_pickled_weights_are_refused(import_root, tiny_model_dir, people):
    folder = place(import_root, tiny_model_dir)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(model_import.ImportRefused, match="pickled weights are refused"):
        model_import.checkpoint_import(relative="org/tiny", name="", user=people["tom"])
    assert not Artifact.objects.exists()


def test_custom_model_code_is_refused(import_root, tiny_model_dir, people):
    folder = place(import_root, tiny_model_dir)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(model_import.ImportRefused, match="trust_remote_code"):
        model_import.checkpoint_import(relative="org/tiny", name="", user=people["tom"])


def test_python_files_and_pickles_are_never_copied(import_root, tiny_model_dir, people):
    folder = place(import_root, tiny_model_dir)
    (folder / "modeling_x.py").write_text("raise SystemExit")
    (folder / "optimizer.pt").write_bytes(b"\x80\x04")
    artifact = model_import.checkpoint_import(relative="org/tiny", name="", user=people["tom"])
    names = {p.name for p in artifact.abspath().iterdir()}
    assert "modeling_x.py" not in names and "optimizer.pt" not in names


@pytest.mark.parametrize("relative", ["../outside", "/etc", "", "org/../../outside", "a\x00b"])
def test_paths_outside_the_import_folder_are_refused(import_root, relative, people):
    (import_root.parent / "outside").mkdir(exist_ok=True)
    with pytest.raises(model_import.ImportRefused):
        model_import.checkpoint_import(relative=relative, name="", user=people["tom"])


def test_a_symlink_leading_out_of_the_import_folder_is_refused(import_root, tiny_model_dir, people):
    (import_root / "link").symlink_to(tiny_model_dir)
    assert model_import.importable_folders() == []
    with pytest.raises(model_import.ImportRefused, match="outside"):
        model_import.checkpoint_import(relative="link", name="", user=people["tom"])
