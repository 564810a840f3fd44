from django.urls import path

from training import (
    arena_views,
    chat_views,
    compare_views,
    inspector_views,
    playground_views,
    report_views,
    reward_views,
    tokenizer_views,
    views,
)

app_name = "training"

urlpatterns = [
    path("runs/", views.run_list, name="run-list"),
    path("runs/new/", views.run_new, name="run-new"),
    path("runs/new/<slug:kind>/", views.run_launch, name="run-launch"),
    path("runs/new/<slug:kind>/estimate/", views.run_estimate, name="run-estimate"),
    path("runs/<int:pk>/", views.run_detail, name="run-detail"),
    path("runs/<int:pk>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<int:pk>/retry/", views.run_retry, name="run-retry"),
    path("artifacts/", views.artifact_list, name="artifact-list"),
    path("artifacts/<int:pk>/", views.artifact_detail, name="artifact-detail"),
    path("corpora/upload/", views.data_upload, {"fmt": "corpus"}, name="corpus-upload"),
    path("webdata/upload/", views.data_upload, {"fmt": "webdata"}, name="webdata-upload"),
    path("blocklists/upload/", views.data_upload, {"fmt": "blocklist"}, name="blocklist-upload"),
    path("artifacts/<int:pk>/inspect/", inspector_views.corpus_inspector, name="corpus-inspector"),
    path(
        "artifacts/<int:pk>/inspect/tokens/",
        inspector_views.corpus_count_tokens,
        name="corpus-count-tokens",
    ),
    path(
        "artifacts/<int:pk>/inspect/document/",
        inspector_views.corpus_document,
        name="corpus-document",
    ),
    path("checkpoints/", views.checkpoint_list, name="checkpoint-list"),
    path("checkpoints/import/", views.checkpoint_import, name="checkpoint-import"),
    path("checkpoints/<int:pk>/report/", report_views.report_card, name="report-card"),
    path(
        "checkpoints/<int:pk>/report.md", report_views.report_card_markdown, name="report-card-md"
    ),
    path(
        "checkpoints/<int:pk>/report.json", report_views.report_card_json, name="report-card-json"
    ),
    path("playground/", playground_views.playground, name="playground"),
    path("checkpoints/compare/", compare_views.compare, name="compare"),
    path("reward/scores/", reward_views.score_explorer, name="score-explorer"),
    path("arena/", arena_views.arena, name="arena"),
    path("arena/leaderboard/", arena_views.leaderboard, name="arena-leaderboard"),
    path("arena/<int:pk>/", arena_views.battle, name="arena-battle"),
    path("arena/<int:pk>/vote/", arena_views.vote, name="arena-vote"),
    path("chat/", chat_views.chat_home, name="chat"),
    path("chat/<int:pk>/", chat_views.chat_session, name="chat-session"),
    path("chat/<int:pk>/send/", chat_views.chat_send, name="chat-send"),
    path("chat/<int:pk>/settings/", chat_views.chat_settings, name="chat-settings"),
    path("chat/<int:pk>/delete/", chat_views.chat_delete, name="chat-delete"),
    path(
        "chat/<int:pk>/messages/<int:message_pk>/regenerate/",
        chat_views.chat_regenerate,
        name="chat-regenerate",
    ),
    path("chat/<int:pk>/messages/<int:message_pk>/show/", chat_views.chat_show, name="chat-show"),
    path(
        "chat/<int:pk>/messages/<int:message_pk>/feedback/",
        chat_views.chat_feedback,
        name="chat-feedback",
    ),
    path(
        "tokenizers/playground/",
        tokenizer_views.tokenizer_playground,
        name="tokenizer-playground",
    ),
    path("playground/stream/", playground_views.playground_stream, name="playground-stream"),
]
