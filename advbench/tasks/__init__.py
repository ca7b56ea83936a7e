"""Tasks: what is specific to a problem. The data set names its task; ``build_task`` makes it once per run."""
from advbench.tasks.base import Task
from advbench.tasks.classification import Classification
from advbench.tasks.text import TextClassification

TASKS = {"classification": Classification, "text": TextClassification}


def build_task(data) -> Task:
    """The task of a loaded data set (``data.task`` names it)."""
    extra = {"vocab": data.vocab} if data.vocab is not None else {}
    return TASKS[data.task](data.n_classes, data.classes, **extra)


__all__ = ["TASKS", "Task", "Classification", "TextClassification", "build_task"]
