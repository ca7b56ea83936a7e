"""Tasks: what is specific to a problem. Each lives in its own package (classification/, text/, detection/,
segmentation/) and is found through the registry; the core imports only this module, ``base`` and ``records``."""
from advbench.tasks.base import Task, worst_case
from advbench.tasks.registry import (default_task, model_tasks, register, sources, task_class, task_of, tasks,
                                     unregister)


def build_task(data, evaluation=None) -> Task:
    """The task of a loaded data set (``data.task`` names it), with the evaluation settings it reads."""
    return task_class(data.task).configured(evaluation).bind(data)


__all__ = ["Task", "worst_case", "build_task", "default_task", "model_tasks", "register", "sources", "task_class",
           "task_of", "tasks", "unregister"]
