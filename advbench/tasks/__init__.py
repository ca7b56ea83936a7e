"""Tasks: what is specific to a problem. The data set names its task; ``build_task`` makes it once per run."""
from advbench.tasks.base import Task
from advbench.tasks.classification import Classification
from advbench.tasks.detection import Detection
from advbench.tasks.segmentation import Segmentation
from advbench.tasks.text import TextClassification

TASKS = {"classification": Classification, "text": TextClassification, "detection": Detection,
         "segmentation": Segmentation}


def build_task(data, evaluation=None) -> Task:
    """The task of a loaded data set (``data.task`` names it), with the evaluation settings it reads."""
    return TASKS[data.task].build(data, evaluation)


__all__ = ["TASKS", "Task", "Classification", "Detection", "Segmentation", "TextClassification",
           "build_task"]
