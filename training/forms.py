"""Launch forms built from each kind's pydantic config, so a new kind needs no form code.

Fields, bounds, defaults and help texts come from the model; pydantic stays the one validator
(its errors are mapped back onto the fields), the form only converts what the browser sends.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import annotated_types
from django import forms
from pydantic.fields import FieldInfo

from training.kinds import RunKind
from training.models import Artifact, ArtifactKind


class DataUploadForm(forms.Form):
    file = forms.FileField(required=False)
    server_file = forms.ChoiceField(
        required=False, label="Or a file from the server's import folder"
    )
    # Download from a URL (training/downloads.py): the field exists only where it is enabled.
    url = forms.CharField(max_length=2000, required=False, label="Or a URL to download")
    name = forms.CharField(max_length=200, required=False, help_text="Defaults to the file name.")

    def __init__(
        self, *args: Any, importable: list[str], downloadable: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["server_file"].choices = [("", "---------"), *[(f, f) for f in importable]]
        if downloadable:
            from django.conf import settings

            hosts = ", ".join(settings.ORCHARD_DOWNLOAD_ALLOWED_HOSTS)
            cap = settings.ORCHARD_DOWNLOAD_MAX_MB
            self.fields["url"].help_text = f"https only, from {hosts}; at most {cap} MB."
        else:
            del self.fields["url"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        sources = [key for key in ("file", "server_file", "url") if cleaned.get(key)]
        if len(sources) != 1:
            if "url" in self.fields:
                raise forms.ValidationError(
                    "Choose one: a file to upload, a file from the server or a URL."
                )
            raise forms.ValidationError("Choose a file to upload or one from the server, not both.")
        return cleaned


class CheckpointImportForm(forms.Form):
    folder = forms.ChoiceField(
        help_text="A Hugging Face model folder (config.json, *.safetensors, tokenizer.json) "
        "placed in the import folder on the server."
    )
    name = forms.CharField(max_length=200, required=False, help_text="Defaults to the folder name.")

    def __init__(self, *args: Any, folders: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["folder"].choices = [(f, f) for f in folders]


def launch_form_class(kind: RunKind) -> type[forms.Form]:
    fields: dict[str, forms.Field] = {}
    for spec in kind.inputs:
        queryset = Artifact.objects.filter(kind=spec.artifact_kind)
        field_class = forms.ModelMultipleChoiceField if spec.many else forms.ModelChoiceField
        fields[f"input_{spec.name}"] = field_class(
            queryset=queryset,
            required=spec.required,
            label=spec.label,
            help_text=f"{ArtifactKind(spec.artifact_kind).label} artifacts",
        )
    lists = []
    for name, info in kind.config_model().model_fields.items():
        fields[f"config_{name}"] = _form_field(name, info)
        if is_list_field(info):
            lists.append(name)
            fields[f"upload_{name}"] = forms.FileField(
                required=False,
                label=f"{fields[f'config_{name}'].label}: add from a file",
                help_text="A .txt file, one entry per line; added to the list above.",
            )
    attrs: dict[str, Any] = {**fields, "list_fields": tuple(lists)}
    return type(f"{kind.name.title()}LaunchForm", (LaunchForm,), attrs)


LIST_UPLOAD_MAX_BYTES = 1 << 20  # word and URL lists are small; a bigger file is a mistake


class LaunchForm(forms.Form):
    """A launch form; list fields (one entry per line) also take entries from an uploaded file,
    appended to what was typed, so a published word list is one upload away."""

    list_fields: tuple[str, ...] = ()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in self.list_fields:
            upload = cleaned.pop(f"upload_{name}", None)
            if not upload:
                continue
            try:
                added = _list_file_text(upload)
            except ValueError as exc:
                self.add_error(f"upload_{name}", str(exc))
                continue
            typed = (cleaned.get(f"config_{name}") or "").rstrip("\n")
            cleaned[f"config_{name}"] = f"{typed}\n{added}" if typed else added
        return cleaned


def _list_file_text(upload: Any) -> str:
    if upload.size > LIST_UPLOAD_MAX_BYTES:
        raise ValueError(
            f"The list file is {upload.size:,} bytes; lists up to "
            f"{LIST_UPLOAD_MAX_BYTES:,} bytes are taken here (upload a domain blocklist as data)."
        )
    raw = upload.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("The list file is not UTF-8 text.") from None
    if "\x00" in text:
        raise ValueError("The list file is not a text file (it holds NUL bytes).")
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def is_list_field(info: FieldInfo) -> bool:
    """A text field holding one entry per line (a pydantic field marked ``{"list": True}``)."""
    extra = info.json_schema_extra
    return isinstance(extra, dict) and extra.get("list") is True


def split_cleaned(kind: RunKind, cleaned: dict[str, Any]) -> tuple[dict, dict]:
    """(config, inputs) from a valid launch form's cleaned data."""
    config = {
        key.removeprefix("config_"): value
        for key, value in cleaned.items()
        if key.startswith("config_") and value is not None
    }
    inputs: dict[str, list[int]] = {}
    for spec in kind.inputs:
        chosen = cleaned.get(f"input_{spec.name}")
        if chosen is None:
            continue
        items = list(chosen) if spec.many else [chosen]
        inputs[spec.name] = [a.pk for a in items]
    return config, inputs


def field_name_for_error(kind: RunKind, key: str) -> str | None:
    """Map a service error key (``vocab_size``, ``inputs.corpus``) to a form field name."""
    if key.startswith("inputs."):
        return f"input_{key.removeprefix('inputs.')}"
    top = key.split(".", 1)[0]
    if top in kind.config_model().model_fields:
        return f"config_{top}"
    return None


def _form_field(name: str, info: FieldInfo) -> forms.Field:
    annotation = _strip_optional(info.annotation)
    bounds = _bounds(info)
    common: dict[str, Any] = {
        "label": name.replace("_", " ").capitalize(),
        "help_text": info.description or "",
        "required": False,  # blank means "use the default": pydantic fills it in
        "initial": None if info.is_required() else info.default,
    }
    if typing.get_origin(annotation) is Literal:
        choices = [(v, v) for v in typing.get_args(annotation)]
        # Not chosen (a plain HTTP post without the field) means the default, like the others.
        return forms.TypedChoiceField(choices=choices, coerce=str, empty_value=None, **common)
    if annotation is bool:
        return forms.BooleanField(**common)
    if annotation is int:
        return forms.IntegerField(min_value=bounds.get("ge"), max_value=bounds.get("le"), **common)
    if annotation is float:
        return forms.FloatField(min_value=bounds.get("ge"), max_value=bounds.get("le"), **common)
    max_length = bounds.get("max_length")
    long_text = (max_length or 0) > 200 or is_list_field(info)
    widget = forms.Textarea(attrs={"rows": 3}) if long_text else None
    return forms.CharField(max_length=max_length, widget=widget, strip=False, **common)


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bounds(info: FieldInfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            found["ge"] = meta.ge
        elif isinstance(meta, annotated_types.Le):
            found["le"] = meta.le
        elif isinstance(meta, annotated_types.MaxLen):
            found["max_length"] = meta.max_length
    return found
