from django.urls import path

from training import api

urlpatterns = [
    path("runs/", api.RunListCreateApi.as_view(), name="api-run-list"),
    path("runs/<int:pk>/", api.RunDetailApi.as_view(), name="api-run-detail"),
    path("runs/<int:pk>/cancel/", api.RunCancelApi.as_view(), name="api-run-cancel"),
    path("runs/<int:pk>/retry/", api.RunRetryApi.as_view(), name="api-run-retry"),
    path("runs/<int:pk>/metrics/", api.RunMetricsApi.as_view(), name="api-run-metrics"),
    path("artifacts/", api.ArtifactListApi.as_view(), name="api-artifact-list"),
    path("artifacts/<int:pk>/", api.ArtifactDetailApi.as_view(), name="api-artifact-detail"),
    path("corpora/", api.CorpusUploadApi.as_view(), name="api-corpus-upload"),
]
