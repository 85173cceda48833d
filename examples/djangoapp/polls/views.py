"""JSON views: the questions (503 until the migrations ran), and a health answer."""

from __future__ import annotations

from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse

from polls.models import Question


def questions(request: HttpRequest) -> JsonResponse:
    try:
        texts = list(Question.objects.order_by("id").values_list("text", flat=True))
    except DatabaseError as exc:  # e.g. the table does not exist before the migrations
        return JsonResponse({"error": str(exc).splitlines()[0]}, status=503)
    return JsonResponse({"questions": texts})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})
