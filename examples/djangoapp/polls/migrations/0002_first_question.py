"""A data migration: the first question. Applied twice, it would ask it twice."""

from typing import Any

from django.db import migrations


def ask(apps: Any, schema_editor: Any) -> None:
    question = apps.get_model("polls", "Question")
    question.objects.create(text="Does the live site migrate itself?")


def unask(apps: Any, schema_editor: Any) -> None:
    apps.get_model("polls", "Question").objects.filter(
        text="Does the live site migrate itself?"
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("polls", "0001_initial")]
    operations = [migrations.RunPython(ask, unask)]
