"""Registering a local Hugging Face model folder as a base checkpoint.

Only folders under IMPORT_ROOT are eligible (a person picks one from a list; paths are never
typed into a filesystem call unchecked). Weights must be safetensors: pickled weights
(``pytorch_model.bin``, ``*.pt``) can run code when loaded and are refused, as is any config that
asks for custom model code (``auto_map``), since Orchard never sets ``trust_remote_code``. The
accepted files are copied into the artifacts root, so the checkpoint stays immutable.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings

from training.models import Artifact, ArtifactKind

ALLOWED_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model", ".md")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class ImportRefused(ValueError):
    pass


def import_root() -> Path:
    return Path(settings.IMPORT_ROOT).resolve()


def importable_folders(max_depth: int = 3) -> list[str]:
    """Folders under the import root that hold a config.json, as paths relative to the root."""
    root = import_root()
    if not root.is_dir():
        return []
    found = []
    for config in sorted(root.rglob("config.json")):
        folder = config.parent
        if len(folder.relative_to(root).parts) <= max_depth and _inside(root, folder):
            found.append(folder.relative_to(root).as_posix())
    return found


def _inside(root: Path, path: Path) -> bool:
    resolved = path.resolve()
    return resolved == root or root in resolved.parents


def resolve_import_folder(relative: str) -> Path:
    root = import_root()
    if not relative or relative.startswith(("/", "\\")) or "\x00" in relative:
        raise ImportRefused("choose a folder inside the import folder")
    folder = (root / relative).resolve()
    if folder == root or root not in folder.parents:
        raise ImportRefused("that folder is outside the import folder")
    if not folder.is_dir():
        raise ImportRefused("no such folder in the import folder")
    return folder


def inspect_model_folder(folder: Path) -> dict[str, Any]:
    """Check a folder is a safe, loadable causal LM; returns facts recorded with the checkpoint."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ImportRefused(f"config.json is missing or not JSON ({exc})") from None
    if "auto_map" in config:
        raise ImportRefused(
            "this model needs its own Python code (auto_map); Orchard never runs model code "
            "shipped in a folder (trust_remote_code is always off)"
        )
    weights = sorted(p.name for p in folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found {', '.join(pickles)}: pickled weights are refused)" if pickles else ""
        raise ImportRefused(f"no .safetensors weights in the folder{hint}")
    if not (folder / "tokenizer.json").is_file():
        raise ImportRefused("no tokenizer.json: a checkpoint needs its tokenizer to be used")
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForCausalLM") for a in architectures):
        raise ImportRefused(f"not a causal language model (architectures: {architectures})")
    return {
        "architecture": architectures[0],
        "model_type": config.get("model_type", ""),
        "parameters": _count_parameters(folder, weights),
        "vocab_size": config.get("vocab_size"),
        "context_length": config.get("max_position_embeddings"),
    }


def _count_parameters(folder: Path, weights: list[str]) -> int:
    from safetensors import safe_open

    total = 0
    for name in weights:
        with safe_open(folder / name, framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                shape = handle.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def checkpoint_import(*, relative: str, name: str, user: Any) -> Artifact:
    from training.services import artifact_register_dir, artifacts_root

    folder = resolve_import_folder(relative)
    facts = inspect_model_folder(folder)
    staging = artifacts_root() / ".incoming" / uuid.uuid4().hex
    staging.mkdir(parents=True)
    try:
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.is_symlink() and path.suffix in ALLOWED_SUFFIXES:
                shutil.copy2(path, staging / path.name)
        return artifact_register_dir(
            source=staging,
            kind=ArtifactKind.CHECKPOINT,
            name=name or folder.name,
            run=None,
            parents=[],
            user=user,
            meta={"stage": "import", "source": relative, **facts},
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
