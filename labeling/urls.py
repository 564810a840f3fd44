from django.urls import path

from labeling import chat_feedback, editor_views, problem_views, ranking_views, views

app_name = "labeling"

urlpatterns = [
    path("", views.project_list, name="project-list"),
    path("mine/", views.my_work, name="my-work"),
    path("projects/new/", views.project_new, name="project-new"),
    path("projects/<int:pk>/", views.project_detail, name="project-detail"),
    path("projects/<int:pk>/edit/", views.project_edit, name="project-edit"),
    path("projects/<int:pk>/conversations/", views.conversation_list, name="conversation-list"),
    path("projects/<int:pk>/items/", views.items_add, name="items-add"),
    path("projects/<int:pk>/next/", views.task_next, name="task-next"),
    path("projects/<int:pk>/write/", views.conversation_new, name="conversation-new"),
    path("projects/<int:pk>/review/", views.review_next, name="review-next"),
    path("projects/<int:pk>/stats/", views.project_stats, name="project-stats"),
    path("projects/<int:pk>/seed/identity/", views.seed_identity, name="seed-identity"),
    path("projects/<int:pk>/seed/idk/", views.seed_idk, name="seed-idk"),
    path("projects/<int:pk>/import/", views.conversation_import, name="conversation-import"),
    path("projects/<int:pk>/export/", views.snapshot_new, name="snapshot-new"),
    path("conversations/<int:pk>/", editor_views.conversation_edit, name="conversation-edit"),
    path(
        "conversations/<int:pk>/autosave/",
        editor_views.conversation_autosave,
        name="conversation-autosave",
    ),
    path("conversations/<int:pk>/chatml/", editor_views.chatml_view, name="conversation-chatml"),
    path("conversations/<int:pk>/draft/", editor_views.draft_reply, name="conversation-draft"),
    path("conversations/<int:pk>/skip/", views.task_skip, name="task-skip"),
    path("conversations/<int:pk>/review/", views.conversation_review, name="conversation-review"),
    path(
        "conversations/<int:pk>/history/", views.conversation_history, name="conversation-history"
    ),
    path("preview/", editor_views.markdown_preview, name="markdown-preview"),
    path("tasks/<int:pk>/rank/", ranking_views.task_rank, name="task-rank"),
    path(
        "from-chat/<int:message_pk>/correction/",
        chat_feedback.chat_correction,
        name="chat-correction",
    ),
    path("from-chat/<int:message_pk>/rank/", chat_feedback.chat_rank, name="chat-rank"),
    path("from-arena/", chat_feedback.arena_import, name="arena-import"),
    path(
        "from-factuality/<int:run_pk>/",
        chat_feedback.factuality_drafts,
        name="factuality-drafts",
    ),
    path("projects/<int:pk>/problems/", problem_views.problems, name="problems"),
    path(
        "projects/<int:pk>/problems/generate/",
        problem_views.problems_generate,
        name="problems-generate",
    ),
    path(
        "projects/<int:pk>/problems/import/", problem_views.problems_import, name="problems-import"
    ),
    path(
        "projects/<int:pk>/problems/export/", problem_views.problems_export, name="problems-export"
    ),
    path(
        "projects/<int:pk>/problems/<int:problem_pk>/review/",
        problem_views.problem_review,
        name="problem-review",
    ),
    path("projects/<int:pk>/responses/", ranking_views.responses_new, name="responses-new"),
    path("projects/<int:pk>/agreement/", ranking_views.project_agreement, name="agreement"),
    path(
        "projects/<int:pk>/preferences/export/",
        ranking_views.preference_export,
        name="preference-export",
    ),
    path(
        "projects/<int:pk>/preferences/import/",
        ranking_views.preference_import,
        name="preference-import",
    ),
    path("snapshots/<int:pk>/", views.snapshot_detail, name="snapshot-detail"),
    path("snapshots/<int:pk>/files/<str:name>", views.snapshot_file, name="snapshot-file"),
]
