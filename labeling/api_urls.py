from django.urls import path

from labeling import api

urlpatterns = [
    path("projects/", api.ProjectListCreateApi.as_view(), name="api-project-list"),
    path("projects/<int:pk>/", api.ProjectDetailApi.as_view(), name="api-project-detail"),
    path("projects/<int:pk>/items/", api.ItemsApi.as_view(), name="api-project-items"),
    path("projects/<int:pk>/next-task/", api.NextTaskApi.as_view(), name="api-next-task"),
    path(
        "projects/<int:pk>/conversations/",
        api.ProjectConversationsApi.as_view(),
        name="api-project-conversations",
    ),
    path("projects/<int:pk>/import/", api.ImportApi.as_view(), name="api-project-import"),
    path(
        "projects/<int:pk>/snapshots/",
        api.SnapshotListCreateApi.as_view(),
        name="api-project-snapshots",
    ),
    path("conversations/<int:pk>/", api.ConversationDetailApi.as_view(), name="api-conversation"),
    path(
        "conversations/<int:pk>/submit/",
        api.ConversationSubmitApi.as_view(),
        name="api-conversation-submit",
    ),
    path(
        "conversations/<int:pk>/review/",
        api.ConversationReviewApi.as_view(),
        name="api-conversation-review",
    ),
    path("snapshots/<int:pk>/", api.SnapshotDetailApi.as_view(), name="api-snapshot-detail"),
    path("tasks/<int:pk>/ranking/", api.RankingSubmitApi.as_view(), name="api-ranking-submit"),
]
