"""``/v1/``: the OpenAI-compatible API (see :mod:`training.openai_api`), at OpenAI's own paths
(no trailing slash)."""

from django.urls import path

from training import openai_api

urlpatterns = [
    path("models", openai_api.ModelListApi.as_view(), name="openai-model-list"),
    path("models/<path:model>", openai_api.ModelDetailApi.as_view(), name="openai-model-detail"),
    path(
        "chat/completions",
        openai_api.ChatCompletionApi.as_view(),
        name="openai-chat-completions",
    ),
]
