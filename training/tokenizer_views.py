"""The tokenizer playground: text as a model sees it, for one tokenizer or two side by side."""

from __future__ import annotations

from functools import lru_cache
from itertools import islice
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from training.models import Artifact, ArtifactKind
from webapp.roles import Capability, role_required

MAX_TEXT_CHARS = 20_000
CORPUS_SAMPLE_BYTES = 200_000
PALETTE_SIZE = 6
DEFAULT_TEXT = "How many r's are in strawberry? 12345 + 678 = 13023.\nThe café's naïve façade."


class TokenizerPlaygroundForm(forms.Form):
    a = forms.ModelChoiceField(queryset=Artifact.objects.none(), label="Tokenizer")
    b = forms.ModelChoiceField(
        queryset=Artifact.objects.none(), required=False, label="Compare with"
    )
    corpus = forms.ModelChoiceField(
        queryset=Artifact.objects.none(),
        required=False,
        label="Measure on corpus",
        help_text="characters per token on a sample of it",
    )
    text = forms.CharField(
        max_length=MAX_TEXT_CHARS,
        strip=False,
        required=False,
        widget=forms.Textarea(attrs={"rows": 5}),
        initial=DEFAULT_TEXT,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tokenizers = Artifact.objects.filter(kind=ArtifactKind.TOKENIZER)
        self.fields["a"].queryset = tokenizers
        self.fields["b"].queryset = tokenizers
        self.fields["corpus"].queryset = Artifact.objects.filter(kind=ArtifactKind.CORPUS)


@lru_cache(maxsize=8)
def _tokenizer(pk: int, sha256: str) -> Any:
    from training.core.token_view import load_tokenizer

    return load_tokenizer(Artifact.objects.get(pk=pk).abspath())


@lru_cache(maxsize=32)
def _corpus_stats(tokenizer_key: tuple[int, str], corpus_key: tuple[int, str]) -> Any:
    from training.core.corpus import iter_documents
    from training.core.token_view import text_stats
    from training.services import artifact_input_path

    corpus = Artifact.objects.get(pk=corpus_key[0])
    sample, size = [], 0
    for document in islice(iter_documents(artifact_input_path(corpus)), 10_000):
        sample.append(document)
        size += len(document.encode("utf-8"))
        if size >= CORPUS_SAMPLE_BYTES:
            break
    return text_stats(_tokenizer(*tokenizer_key), sample)


def _column(artifact: Artifact, text: str, corpus: Artifact | None) -> dict[str, Any]:
    from training.core.token_view import pieces, text_stats

    key = (artifact.pk, artifact.sha256)
    tokenizer = _tokenizer(*key)
    found = pieces(tokenizer, text)
    return {
        "artifact": artifact,
        "pieces": [(p, i % PALETTE_SIZE) for i, p in enumerate(found)],
        "stats": text_stats(tokenizer, [text]) if text else None,
        "corpus_stats": _corpus_stats(key, (corpus.pk, corpus.sha256)) if corpus else None,
    }


@role_required(Capability.CHAT)
@require_GET
def tokenizer_playground(request: HttpRequest) -> HttpResponse:
    data = request.GET if "a" in request.GET else None
    first = Artifact.objects.filter(kind=ArtifactKind.TOKENIZER).first()
    form = TokenizerPlaygroundForm(data, initial={"a": first, "text": DEFAULT_TEXT})
    columns: list[dict[str, Any]] = []
    if form.is_valid():
        cleaned = form.cleaned_data
        chosen = [a for a in (cleaned["a"], cleaned["b"]) if a is not None]
        columns = [_column(a, cleaned["text"], cleaned["corpus"]) for a in chosen]
    elif data is None and first is not None:
        columns = [_column(first, DEFAULT_TEXT, None)]
    template = "training/tokenizer_playground.html"
    if request.htmx:
        template += "#token-results"
    status = 400 if data is not None and not form.is_valid() else 200
    return render(request, template, {"form": form, "columns": columns}, status=status)
