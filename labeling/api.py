"""REST API for labeling (session or token auth): scripts bulk-import, label and export.

Every write goes through the same services as the pages, so the API keeps the same rules: the
queue's overlap, optimistic versions (409 on a stale ``version``), review permissions.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.generics import ListAPIView, RetrieveAPIView, get_object_or_404
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from labeling import data, services
from labeling.models import (
    RESPONSE_TASKS,
    Conversation,
    ConversationStatus,
    Project,
    Snapshot,
    TaskKind,
)
from webapp.idempotency import idempotent
from webapp.roles import Capability, HasCapability, user_can

ANY_LABELING = (Capability.LABEL, Capability.REVIEW, Capability.MANAGE_PROJECTS)
NEW_STATUSES = [  # what a conversation may be created or imported as
    (value, label)
    for value, label in ConversationStatus.choices
    if value != ConversationStatus.REJECTED
]


def _enum_schema(choices: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "string",
        "enum": [value for value, _ in choices],
        "description": "\n".join(f"* `{value}` - {label}" for value, label in choices),
    }


# Each ``status`` choice set is its own named schema component: the runs API has a ``status``
# enum too, and drf-spectacular warns (and names them Status<hash>Enum) when one field name
# carries several choice sets in several components.
@extend_schema_field(
    _enum_schema(ConversationStatus.choices), component_name="ConversationStatusEnum"
)
class ConversationStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=ConversationStatus.choices, **kwargs)


@extend_schema_field(_enum_schema(NEW_STATUSES), component_name="NewConversationStatusEnum")
class NewConversationStatusField(serializers.ChoiceField):
    """The statuses a conversation may enter with: draft, submitted or already approved."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=NEW_STATUSES, **kwargs)


class ProjectSerializer(serializers.ModelSerializer):
    system_prompts = serializers.ListField(
        child=serializers.CharField(max_length=20_000), required=False, max_length=20
    )

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "description",
            "guidelines",
            "guideline_version",
            "system_prompts",
            "required_turns",
            "overlap",
            "lease_minutes",
            "draft_checkpoint",
            "created_at",
        ]
        read_only_fields = ["guideline_version", "created_at"]
        # As on the project form (overlap 0 would break the database's check constraint).
        extra_kwargs = {
            name: {"min_value": 1} for name in ("required_turns", "overlap", "lease_minutes")
        }


class ConversationSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username", default=None, read_only=True)
    status = ConversationStatusField(read_only=True)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "project",
            "author",
            "status",
            "messages",
            "tags",
            "source",
            "source_id",
            "version",
            "guideline_version",
            "submitted_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class ConversationWriteSerializer(serializers.Serializer):
    messages = serializers.ListField(child=serializers.DictField(), max_length=200)
    tags = serializers.ListField(child=serializers.CharField(max_length=40), required=False)
    version = serializers.IntegerField(required=False)


class BulkConversationSerializer(serializers.Serializer):
    conversations = serializers.ListField(
        child=ConversationWriteSerializer(), min_length=1, max_length=5000
    )
    status = NewConversationStatusField(default=ConversationStatus.SUBMITTED)


class ItemsSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=TaskKind.choices[:3])
    count = serializers.IntegerField(min_value=0, max_value=10_000, default=0)
    seeds = serializers.ListField(child=serializers.ListField(child=serializers.DictField()),
                                  required=False, max_length=10_000)  # fmt: skip

    def validate_seeds(self, seeds: list) -> list:
        for index, seed in enumerate(seeds):
            problems = services.message_problems(seed)
            if problems:
                raise ValidationError(f"seed {index}: {problems[0]}")
        return seeds


class ReviewSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["approve", "reject", "edit"])
    comment = serializers.CharField(required=False, allow_blank=True, default="")
    messages = serializers.ListField(child=serializers.DictField(), required=False)
    version = serializers.IntegerField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A missing comment is a bad request (400), not a permission problem (403).
        if attrs["decision"] == "reject" and not attrs["comment"].strip():
            raise ValidationError(
                {"comment": ["Say what to change: a rejection needs a comment for the author."]}
            )
        return attrs


class ImportSerializer(serializers.Serializer):
    file = serializers.FileField()
    format = serializers.ChoiceField(choices=["auto", "messages", "sharegpt", "oasst", "hh"],
                                     default="auto")  # fmt: skip
    status = NewConversationStatusField(default=ConversationStatus.SUBMITTED)
    tags = serializers.ListField(child=serializers.CharField(max_length=40), required=False)


class SnapshotCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    validation_fraction = serializers.FloatField(min_value=0.0, max_value=0.5, default=0.1)
    tags = serializers.ListField(child=serializers.CharField(max_length=40), required=False)


class SnapshotSerializer(serializers.ModelSerializer):
    artifact = serializers.PrimaryKeyRelatedField(read_only=True)
    conversations = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = Snapshot
        fields = ["id", "project", "artifact", "card", "conversations", "created_at"]


def _refusal(exc: Exception) -> ValidationError:
    return ValidationError({"detail": getattr(exc, "problems", None) or [str(exc)]})


class ProjectListCreateApi(ListAPIView):
    serializer_class = ProjectSerializer
    queryset = Project.objects.all()

    def get_permissions(self) -> list:
        if self.request.method == "POST":
            return [HasCapability(Capability.MANAGE_PROJECTS)()]
        return [HasCapability(*ANY_LABELING)()]

    @extend_schema(request=ProjectSerializer, responses={201: ProjectSerializer})
    def post(self, request: Request) -> Response:
        serializer = ProjectSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        project = services.project_create(user=request.user, **serializer.validated_data)
        return Response(ProjectSerializer(project).data, status=status.HTTP_201_CREATED)


class ProjectDetailApi(RetrieveAPIView):
    serializer_class = ProjectSerializer
    queryset = Project.objects.all()
    permission_classes = [HasCapability(*ANY_LABELING)]


class ItemsApi(APIView):
    permission_classes = [HasCapability(Capability.MANAGE_PROJECTS)]

    @extend_schema(request=ItemsSerializer, responses={201: dict})
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        project = get_object_or_404(Project, pk=pk)
        body = ItemsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        items = services.items_add(project=project, **body.validated_data)
        return Response({"created": len(items)}, status=status.HTTP_201_CREATED)


class NextTaskApi(APIView):
    permission_classes = [HasCapability(Capability.LABEL)]

    @extend_schema(
        request=None,
        responses={200: ConversationSerializer, 204: None},
        description="A writing task answers with its conversation; a ranking or arena task "
        'with {"kind", "assignment", "prompt", "responses"} (submit it to '
        "/api/labeling/tasks/<assignment>/ranking/).",
    )
    def post(self, request: Request, pk: int) -> Response:
        from labeling import ranking

        project = get_object_or_404(Project, pk=pk)
        ranking.batches_sync(project=project)
        assignment = services.next_task(user=request.user, project=project)
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        item = assignment.item
        if item.kind in RESPONSE_TASKS:
            return Response(
                {
                    "kind": item.kind,
                    "assignment": assignment.pk,
                    "prompt": item.seed_messages,
                    "responses": [r["text"] for r in item.responses],
                }
            )
        conversation = services.assignment_conversation(assignment=assignment)
        return Response(ConversationSerializer(conversation).data)


class RankingSubmitSerializer(serializers.Serializer):
    order = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField()),
        required=False,
        help_text="Tiers of response indices, best first; indices in one tier are tied.",
    )
    vote = serializers.ChoiceField(choices=["a", "b", "tie", "both_bad"], required=False)
    all_bad = serializers.BooleanField(default=False)
    better_answer = serializers.CharField(required=False, allow_blank=True, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("order" in attrs) == ("vote" in attrs):
            raise ValidationError({"order": ["give either an order (ranking) or a vote (arena)"]})
        return attrs


class RankingSubmitApi(APIView):
    permission_classes = [HasCapability(Capability.LABEL)]

    @extend_schema(request=RankingSubmitSerializer, responses={201: dict})
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        from labeling import ranking
        from labeling.models import Assignment

        assignment = get_object_or_404(
            Assignment.objects.select_related("item", "item__project"),
            pk=pk,
            labeler=request.user,
        )
        body = RankingSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = body.validated_data
        if "vote" in values:
            order, all_bad = ranking.VOTES[values["vote"]]
        else:
            order, all_bad = values["order"], values["all_bad"]
        try:
            saved = ranking.ranking_submit(
                assignment=assignment,
                user=request.user,
                ranking=ranking.RankingInput(order, all_bad, values["better_answer"]),
            )
        except services.LabelingRefused as exc:
            raise ValidationError({"order": [str(exc)]}) from None
        return Response({"ranking": saved.pk, "order": saved.order}, status=201)


class ProjectConversationsApi(ListAPIView):
    serializer_class = ConversationSerializer

    def get_permissions(self) -> list:
        if self.request.method == "POST":
            return [HasCapability(Capability.MANAGE_PROJECTS)()]
        return [HasCapability(*ANY_LABELING)()]

    def get_queryset(self) -> Any:
        conversations = Conversation.objects.filter(project_id=self.kwargs["pk"]).select_related(
            "author"
        )
        user = self.request.user
        if not (user_can(user, Capability.REVIEW) or user_can(user, Capability.MANAGE_PROJECTS)):
            conversations = conversations.filter(author=user)
        wanted = self.request.query_params.get("status")
        if wanted:
            if wanted not in ConversationStatus.values:
                raise ValidationError(
                    {"status": [f"one of {', '.join(ConversationStatus.values)}"]}
                )
            conversations = conversations.filter(status=wanted)
        return conversations

    @extend_schema(request=BulkConversationSerializer, responses={201: dict})
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        """Bulk-create conversations (all or nothing: one invalid conversation refuses the lot)."""
        project = get_object_or_404(Project, pk=pk)
        body = BulkConversationSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        wanted = body.validated_data["status"]
        problems = {}
        for index, row in enumerate(body.validated_data["conversations"]):
            found = services.validate_for_status(project, row["messages"], wanted)
            if found:
                problems[str(index)] = found
        if problems:
            raise ValidationError({"conversations": problems})
        from django.db import transaction

        with transaction.atomic():
            created = [
                services.conversation_create(
                    project=project,
                    user=request.user,
                    messages=row["messages"],
                    tags=row.get("tags"),
                    source="api",
                    status=wanted,
                ).pk
                for row in body.validated_data["conversations"]
            ]
        return Response({"created": created}, status=status.HTTP_201_CREATED)


class ConversationDetailApi(APIView):
    permission_classes = [HasCapability(*ANY_LABELING)]

    def _get(self, request: Request, pk: int) -> Conversation:
        conversation = get_object_or_404(Conversation.objects.select_related("project"), pk=pk)
        user = request.user
        if not (
            conversation.author_id == user.pk
            or user_can(user, Capability.REVIEW)
            or user_can(user, Capability.MANAGE_PROJECTS)
        ):
            raise PermissionDenied("This conversation is someone else's.")
        return conversation

    @extend_schema(responses={200: ConversationSerializer})
    def get(self, request: Request, pk: int) -> Response:
        return Response(ConversationSerializer(self._get(request, pk)).data)

    @extend_schema(request=ConversationWriteSerializer, responses={200: ConversationSerializer})
    def put(self, request: Request, pk: int) -> Response:
        conversation = self._get(request, pk)
        body = ConversationWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if "version" not in body.validated_data:
            raise ValidationError({"version": ["the version you edited is required"]})
        try:
            saved = services.conversation_save(
                conversation=conversation,
                user=request.user,
                messages=body.validated_data["messages"],
                tags=body.validated_data.get("tags"),
                expected_version=body.validated_data["version"],
            )
        except services.StaleEdit as exc:
            return Response(
                {"detail": str(exc), "current": ConversationSerializer(exc.current).data},
                status=status.HTTP_409_CONFLICT,
            )
        except services.LabelingRefused as exc:
            raise PermissionDenied(str(exc)) from None
        except services.InvalidConversation as exc:
            raise _refusal(exc) from None
        return Response(ConversationSerializer(saved).data)


class ConversationSubmitApi(ConversationDetailApi):
    @extend_schema(request=None, responses={200: ConversationSerializer})
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        conversation = self._get(request, pk)
        try:
            version = int(request.data.get("version", conversation.version))
        except (TypeError, ValueError):
            raise ValidationError({"version": ["must be a whole number"]}) from None
        try:
            saved = services.conversation_submit(
                conversation=conversation, user=request.user, expected_version=version
            )
        except services.StaleEdit as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except services.LabelingRefused as exc:
            raise PermissionDenied(str(exc)) from None
        except services.InvalidConversation as exc:
            raise _refusal(exc) from None
        return Response(ConversationSerializer(saved).data)


class ConversationReviewApi(APIView):
    permission_classes = [HasCapability(Capability.REVIEW)]

    @extend_schema(request=ReviewSerializer, responses={200: ConversationSerializer})
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        conversation = get_object_or_404(Conversation.objects.select_related("project"), pk=pk)
        body = ReviewSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = body.validated_data
        try:
            services.review_decide(
                conversation=conversation,
                user=request.user,
                expected_version=values["version"],
                review=services.ReviewInput(
                    values["decision"], values["comment"], values.get("messages")
                ),
            )
        except services.StaleEdit as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except services.LabelingRefused as exc:
            raise PermissionDenied(str(exc)) from None
        except services.InvalidConversation as exc:
            raise _refusal(exc) from None
        conversation.refresh_from_db()
        return Response(ConversationSerializer(conversation).data)


class ImportApi(APIView):
    permission_classes = [HasCapability(Capability.MANAGE_PROJECTS)]
    parser_classes = [MultiPartParser]

    @extend_schema(request=ImportSerializer, responses={201: dict})
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        project = get_object_or_404(Project, pk=pk)
        body = ImportSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = body.validated_data
        report = data.import_conversations(
            project=project,
            user=request.user,
            uploaded=values["file"],
            fmt=values["format"],
            status=values["status"],
            tags=values.get("tags") or [],
        )
        return Response(
            {
                "imported": report.imported,
                "skipped": report.skipped,
                "problems": [{"line": p.line, "message": p.message} for p in report.problems],
            },
            status=status.HTTP_201_CREATED,
        )


class SnapshotListCreateApi(ListAPIView):
    serializer_class = SnapshotSerializer
    parser_classes = [JSONParser]

    def get_permissions(self) -> list:
        if self.request.method == "POST":
            return [HasCapability(Capability.MANAGE_PROJECTS)()]
        return [HasCapability(Capability.MANAGE_PROJECTS, Capability.VIEW_RUNS)()]

    def get_queryset(self) -> Any:
        return Snapshot.objects.filter(project_id=self.kwargs["pk"]).prefetch_related(
            "conversations"
        )

    @extend_schema(request=SnapshotCreateSerializer, responses={201: SnapshotSerializer})
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        project = get_object_or_404(Project, pk=pk)
        body = SnapshotCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            snapshot = data.snapshot_create(
                project=project, user=request.user, **body.validated_data
            )
        except ValueError as exc:
            raise ValidationError({"detail": [str(exc)]}) from None
        return Response(SnapshotSerializer(snapshot).data, status=status.HTTP_201_CREATED)


class SnapshotDetailApi(RetrieveAPIView):
    serializer_class = SnapshotSerializer
    queryset = Snapshot.objects.prefetch_related("conversations")
    permission_classes = [HasCapability(Capability.MANAGE_PROJECTS, Capability.VIEW_RUNS)]
