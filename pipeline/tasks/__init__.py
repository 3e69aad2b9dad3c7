"""Tasks know prompts and answer schemas, nothing about HTTP."""

from __future__ import annotations

from pipeline.spec import JobSpec
from pipeline.tasks.base import Task
from pipeline.tasks.classify import ClassifyTask
from pipeline.tasks.custom import CustomTask
from pipeline.tasks.moderate import ModerateTask
from pipeline.tasks.translate import TranslateTask


def build_task(spec: JobSpec) -> Task:
    if spec.classify is not None:
        return ClassifyTask(spec.classify)
    if spec.translate is not None:
        return TranslateTask(spec.translate)
    if spec.moderate is not None:
        return ModerateTask(spec.moderate)
    assert spec.custom is not None
    return CustomTask(spec.custom, spec.input.text)


__all__ = ["Task", "build_task"]
