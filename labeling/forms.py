"""Forms for labeling pages. Each validates what a person typed and says plainly what is wrong."""

from __future__ import annotations

from typing import Any

from django import forms

from labeling.models import Project, TaskKind
from training.models import Artifact, ArtifactKind

SYSTEM_PROMPT_SEPARATOR = "\n---\n"
MAX_IMPORT_BYTES = 200 * 1024 * 1024


def _checkpoints() -> Any:
    return Artifact.objects.filter(kind=ArtifactKind.CHECKPOINT).order_by("-created_at")


class ProjectForm(forms.ModelForm):
    system_prompts_text = forms.CharField(
        label="System prompts",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="The first is put at the top of every new conversation. Separate several "
        "with a line holding only ---.",
    )

    class Meta:
        model = Project
        fields = [
            "name",
            "description",
            "guidelines",
            "required_turns",
            "overlap",
            "lease_minutes",
            "draft_checkpoint",
        ]
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "guidelines": forms.Textarea(attrs={"rows": 14, "class": "mono"}),
        }
        help_texts = {"lease_minutes": "A task not saved for this long goes back to the queue."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["draft_checkpoint"].queryset = _checkpoints()
        self.fields["required_turns"].min_value = 1
        self.fields["overlap"].min_value = 1
        self.fields["lease_minutes"].min_value = 1
        if self.instance.pk:
            self.initial["system_prompts_text"] = SYSTEM_PROMPT_SEPARATOR.join(
                self.instance.system_prompts
            )

    def clean_guidelines(self) -> str:
        # browsers send CRLF: normalised, so an unchanged text never makes a new version
        return self.cleaned_data["guidelines"].replace("\r\n", "\n")

    def clean_system_prompts_text(self) -> list[str]:
        text = self.cleaned_data["system_prompts_text"].replace("\r\n", "\n")
        return [p.strip() for p in text.split(SYSTEM_PROMPT_SEPARATOR) if p.strip()]

    def project_fields(self) -> dict[str, Any]:
        data = {name: self.cleaned_data[name] for name in self.Meta.fields}
        data["system_prompts"] = self.cleaned_data["system_prompts_text"]
        return data


class ItemsForm(forms.Form):
    kind = forms.ChoiceField(choices=TaskKind.choices[:3])
    count = forms.IntegerField(
        min_value=0, max_value=10_000, initial=10, required=False,
        help_text="For “write from scratch”: how many tasks to add.",
    )  # fmt: skip
    prompts = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="For “write the assistant reply”: one user prompt per line.",
    )
    seed_file = forms.FileField(
        required=False,
        help_text='For “continue a conversation”: a JSONL file of {"messages": [...]} to continue.',
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        kind = data.get("kind")
        if kind == TaskKind.WRITE and not data.get("count"):
            self.add_error("count", "How many tasks?")
        if kind == TaskKind.REPLY and not (data.get("prompts") or "").strip():
            self.add_error("prompts", "Write at least one prompt.")
        if kind == TaskKind.CONTINUE and not data.get("seed_file"):
            self.add_error("seed_file", "Choose a JSONL file of conversations to continue.")
        return data


class IdentityForm(forms.Form):
    assistant_name = forms.CharField(max_length=100, initial="Orchard Assistant")
    maker = forms.CharField(max_length=200, help_text="Who built the assistant.")
    purpose = forms.CharField(
        max_length=500, initial="answer questions and help with writing, math and code"
    )
    limitations = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        initial="I cannot browse the internet.\nI do not remember earlier conversations.\n"
        "I can make mistakes, so check important facts.",
        help_text="One per line.",
    )
    approve = forms.BooleanField(
        required=False, help_text="Approve at once instead of sending to review."
    )


class IdkForm(forms.Form):
    questions = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="One question per line that the assistant cannot know the answer to.",
    )
    answer = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        initial="I don't know. I have no reliable information about that, and I would rather "
        "say so than guess.",
    )
    approve = forms.BooleanField(required=False)


class ImportForm(forms.Form):
    FORMATS = [
        ("auto", "Detect from the first line"),
        ("messages", "JSONL with messages (Hugging Face / TRL)"),
        ("sharegpt", "JSONL in ShareGPT form"),
        ("oasst", "OpenAssistant message trees"),
        ("hh", "HH-RLHF transcripts (the chosen reply)"),
    ]
    STATUSES = [
        ("submitted", "Submitted: reviewers check them"),
        ("approved", "Approved: ready to export"),
        ("draft", "Draft"),
    ]
    file = forms.FileField(help_text="JSONL, optionally gzip-compressed.")
    format = forms.ChoiceField(choices=FORMATS, initial="auto")
    status = forms.ChoiceField(choices=STATUSES, initial="submitted")
    tags = forms.CharField(required=False, help_text="Comma-separated tags added to each.")
    oasst_all_paths = forms.BooleanField(
        required=False,
        label="OpenAssistant: every path",
        help_text="Import every root-to-leaf path instead of the best-ranked one per tree.",
    )

    def clean_file(self) -> Any:
        uploaded = self.cleaned_data["file"]
        if uploaded.size > MAX_IMPORT_BYTES:
            raise forms.ValidationError("The file is larger than 200 MB.")
        return uploaded


class ExportForm(forms.Form):
    name = forms.CharField(max_length=200)
    validation_fraction = forms.FloatField(min_value=0.0, max_value=0.5, initial=0.1)
    tags = forms.CharField(
        required=False, help_text="Only conversations with any of these tags (comma-separated)."
    )


class ReviewForm(forms.Form):
    decision = forms.ChoiceField(
        choices=[("approve", "Approve"), ("reject", "Request changes"), ("edit", "Save my edits")]
    )
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    version = forms.IntegerField(widget=forms.HiddenInput)


def split_tags(text: str) -> list[str]:
    return sorted({t.strip()[:40] for t in text.split(",") if t.strip()})
