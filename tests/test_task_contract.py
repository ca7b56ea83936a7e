"""The task protocol is declared: every member the core (attacks, training, evaluation, data, runtime...) uses on a
task is a member of ``advbench.tasks.base.Task``, and the core never probes a task with hasattr/getattr."""
import ast
import subprocess
import sys
from pathlib import Path

import advbench
from advbench.tasks.base import Task

PACKAGE = Path(advbench.__file__).resolve().parent
CORE = [p for p in PACKAGE.rglob("*.py") if "tasks" not in p.relative_to(PACKAGE).parts]


def _is_task(node) -> bool:
    """``task``, ``self.task``, ``b.task``, ``run.task``...: an expression that names a task."""
    return (isinstance(node, ast.Name) and node.id == "task") or (isinstance(node, ast.Attribute)
                                                                   and node.attr == "task")


def test_every_member_the_core_uses_on_a_task_is_declared():
    used = {}
    for path in CORE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _is_task(node.value):
                used.setdefault(node.attr, set()).add(path.relative_to(PACKAGE).as_posix())
    assert len(used) > 20  # the walk found the core's uses
    undeclared = {name: sorted(where) for name, where in used.items() if not hasattr(Task, name)}
    assert not undeclared, f"used by the core but not declared on Task: {undeclared}"


def test_the_core_never_probes_a_task():
    for path in CORE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr",
                                                                                                  "getattr"):
                assert not (node.args and _is_task(node.args[0])), f"{path.name}:{node.lineno} probes a task"


def test_the_registry_order_does_not_follow_import_order():
    # The first task an option serves picks its partners in --help and in test_config: a program that imports
    # detection's package (a detector's module, say) before the registry loads must not move detection first.
    code = ("import advbench.tasks.detection\nfrom advbench.tasks import tasks\n"
            "from advbench.options import serves\n"
            "assert list(tasks())[:4] == ['classification', 'text', 'detection', 'segmentation'], list(tasks())\n"
            "assert serves('model', 'module')[0] == 'classification'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0
