"""The sampling settings of the pages that generate text (chat, compare, playground).

One definition of each field, with bounds inside what the generation engine accepts
(:class:`training.core.generate.SamplingParams`) and the server's cap on new tokens, so that no
page takes a value the engine would refuse in the middle of a request. Fields are built per form
instance: the cap is a setting, read when the form is made.
"""

from __future__ import annotations

from django import forms
from django.conf import settings

CHAT_TEMPERATURE_MAX = 2.0  # above it replies are noise; the playground goes to the engine's 5
ENGINE_TEMPERATURE_MAX = 5.0


def temperature(initial: float, most: float = CHAT_TEMPERATURE_MAX) -> forms.FloatField:
    return forms.FloatField(min_value=0, max_value=most, initial=initial, help_text="0 = greedy")


def top_p(initial: float = 1.0) -> forms.FloatField:
    return forms.FloatField(min_value=0.01, max_value=1, initial=initial, help_text="1 = off")


def max_new_tokens(initial: int) -> forms.IntegerField:
    cap = settings.ORCHARD_MAX_NEW_TOKENS  # the server's limit, whatever the client sends
    return forms.IntegerField(
        min_value=1, max_value=cap, initial=min(initial, cap), help_text=f"at most {cap}"
    )
