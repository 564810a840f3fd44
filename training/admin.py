from django.contrib import admin

from training.models import Artifact, Run, RunMetric, WorkerHeartbeat


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "created_by", "created_at", "progress", "attempts"]
    list_filter = ["kind", "status"]
    readonly_fields = ["lease_owner", "lease_expires_at", "heartbeat_at"]


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "name", "short_hash", "size_bytes", "created_at"]
    list_filter = ["kind"]
    readonly_fields = ["path", "sha256"]


admin.site.register(RunMetric)
admin.site.register(WorkerHeartbeat)
