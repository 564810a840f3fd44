"""REST API for runs and artifacts (session or token auth). One view per operation."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.generics import ListAPIView, RetrieveAPIView, get_object_or_404
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from training import selectors, services, uploads
from training.kinds import ConfigInvalid
from training.models import Artifact, ArtifactKind, Run, RunStatus
from webapp.idempotency import idempotent
from webapp.roles import Capability, HasCapability


class ArtifactSerializer(serializers.ModelSerializer):
    parents = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    created_by = serializers.CharField(source="created_by.username", default=None)

    class Meta:
        model = Artifact
        fields = [
            "id",
            "kind",
            "name",
            "sha256",
            "size_bytes",
            "meta",
            "run",
            "parents",
            "created_by",
            "created_at",
        ]


class RunSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")
    outputs = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = Run
        fields = [
            "id",
            "kind",
            "status",
            "config",
            "inputs",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "progress",
            "step",
            "total_steps",
            "message",
            "error",
            "result",
            "cancel_requested",
            "attempts",
            "max_attempts",
            "outputs",
        ]


class RunDetailSerializer(RunSerializer):
    latest_metrics = serializers.SerializerMethodField()
    log_tail = serializers.CharField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "latest_metrics", "log_tail"]

    def get_latest_metrics(self, run: Run) -> dict[str, dict[str, float]]:
        return selectors.latest_metrics(run)


class RunCreateSerializer(serializers.Serializer):
    kind = serializers.CharField(max_length=32)
    config = serializers.JSONField(required=False, default=dict)
    inputs = serializers.JSONField(required=False, default=dict)


class MetricSerializer(serializers.Serializer):
    name = serializers.CharField()
    step = serializers.IntegerField()
    value = serializers.FloatField()


def _filter_value(request: Request, name: str, allowed: list[str]) -> str:
    value = request.query_params.get(name, "")
    if value and value not in allowed:
        raise ValidationError({name: [f"must be one of {', '.join(allowed)}"]})
    return value


@extend_schema(
    parameters=[
        OpenApiParameter("kind", str),
        OpenApiParameter("status", str, enum=RunStatus.values),
    ]
)
class RunListCreateApi(ListAPIView):
    serializer_class = RunSerializer

    def get_permissions(self) -> list:
        needed = Capability.LAUNCH_RUNS if self.request.method == "POST" else Capability.VIEW_RUNS
        return [HasCapability(needed)()]

    def get_queryset(self) -> Any:
        from training.kinds import all_kinds

        kind = _filter_value(self.request, "kind", [k.name for k in all_kinds()])
        run_status = _filter_value(self.request, "status", RunStatus.values)
        return selectors.run_list(kind=kind, status=run_status).prefetch_related("outputs")

    @extend_schema(request=RunCreateSerializer, responses={201: RunDetailSerializer})
    @idempotent
    def post(self, request: Request) -> Response:
        data = RunCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            run = services.run_create(user=request.user, **data.validated_data)
        except ConfigInvalid as exc:
            raise ValidationError(exc.errors) from None
        return Response(RunDetailSerializer(run).data, status=status.HTTP_201_CREATED)


class RunDetailApi(RetrieveAPIView):
    serializer_class = RunDetailSerializer
    permission_classes = [HasCapability(Capability.VIEW_RUNS)]
    queryset = Run.objects.select_related("created_by").prefetch_related("outputs")


class _RunActionApi(APIView):
    permission_classes = [HasCapability(Capability.LAUNCH_RUNS)]
    perform = staticmethod(services.run_cancel)

    @extend_schema(request=None, responses={200: RunDetailSerializer})
    def post(self, request: Request, pk: int) -> Response:
        run = get_object_or_404(Run, pk=pk)
        if not services.user_may_act_on(request.user, run):
            raise PermissionDenied("Only the person who launched this run (or an admin) may.")
        try:
            run = self.perform(run=run, user=request.user)
        except services.RunActionRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(RunDetailSerializer(run).data)


class RunCancelApi(_RunActionApi):
    perform = staticmethod(services.run_cancel)


class RunRetryApi(_RunActionApi):
    perform = staticmethod(services.run_retry)


class RunMetricsApi(APIView):
    permission_classes = [HasCapability(Capability.VIEW_RUNS)]

    @extend_schema(
        parameters=[OpenApiParameter("name", str)], responses={200: MetricSerializer(many=True)}
    )
    def get(self, request: Request, pk: int) -> Response:
        run = get_object_or_404(Run, pk=pk)
        points = run.metrics.order_by("name", "step").values("name", "step", "value")
        if name := request.query_params.get("name"):
            points = points.filter(name=name)
        return Response(MetricSerializer(points, many=True).data)


@extend_schema(parameters=[OpenApiParameter("kind", str, enum=ArtifactKind.values)])
class ArtifactListApi(ListAPIView):
    serializer_class = ArtifactSerializer
    permission_classes = [HasCapability(Capability.VIEW_RUNS)]

    def get_queryset(self) -> Any:
        kind = _filter_value(self.request, "kind", ArtifactKind.values)
        return selectors.artifact_list(kind=kind).prefetch_related("parents")


class ArtifactDetailApi(RetrieveAPIView):
    serializer_class = ArtifactSerializer
    permission_classes = [HasCapability(Capability.VIEW_RUNS)]
    queryset = Artifact.objects.select_related("created_by").prefetch_related("parents")


class CorpusUploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    name = serializers.CharField(max_length=200, required=False, default="")


class CorpusUploadApi(APIView):
    permission_classes = [HasCapability(Capability.LAUNCH_RUNS)]
    parser_classes = [MultiPartParser]

    @extend_schema(request=CorpusUploadSerializer, responses={201: ArtifactSerializer})
    def post(self, request: Request) -> Response:
        data = CorpusUploadSerializer(data=request.data)  # parses the body first
        if getattr(request._request, "upload_too_large", False):
            return Response(
                {"file": ["larger than the upload limit"]},
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        data.is_valid(raise_exception=True)
        try:
            artifact = uploads.corpus_upload(
                uploaded=data.validated_data["file"],
                name=data.validated_data["name"],
                user=request.user,
            )
        except uploads.UploadRefused as exc:
            raise ValidationError({"file": [str(exc)]}) from None
        return Response(ArtifactSerializer(artifact).data, status=status.HTTP_201_CREATED)
