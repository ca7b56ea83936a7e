"""The architecture holds, and a new problem needs no edit to the core.

The import graph of advbench/ (every import, in functions too) has no cycle, and no module outside a task package
imports it: the core reaches tasks through the registry (advbench/tasks/registry.py). Every task's declarations
name real things (training modes, model options, data set options). And a task defined here, keypoints, trains
adversarially and is evaluated under attack through the real CLI, registered from this file alone: the worked
example of docs/architecture.md "Where a new thing goes".
"""
import ast
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import advbench
from advbench.data.source import Source
from advbench.errors import AdvbenchError
from advbench.tasks import register, sources, tasks, unregister
from advbench.tasks.base import Task, worst_case
from helpers import cli

PACKAGE = Path(advbench.__file__).resolve().parent
CONF = PACKAGE / "conf"
# The registry imports each built-in task package by an f-string name (registry.py _load): the one dynamic import
# of a task package that is sanctioned, since it is how the core finds tasks without naming them.
SANCTIONED_DYNAMIC = {"advbench.tasks.registry"}
# A task package may build on another only where declared here: text classification is classification seen from
# the embeddings (TextClassification subclasses Classification). The core may never.
BUILDS_ON = {"advbench.tasks.text": {"advbench.tasks.classification"}}


# --- the import graph -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line`` (``target`` ending in ``.*``: a dynamic import of any module
    under that prefix)."""

    source: str
    line: int
    target: str


def modules(root: Path, package: str) -> dict:
    """{module name: file} of every module of ``package`` (its folder ``root``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _resolve(name: str, known: dict) -> str:
    """The longest prefix of dotted ``name`` that is a known module (``advbench.x.f`` -> ``advbench.x``)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def _dynamic(call: ast.Call):
    """The module an ``importlib.import_module``/``__import__`` call names: the literal, or ``prefix.*`` for an
    f-string with a literal prefix; None for anything else."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return f"{arg.values[0].value.rstrip('.')}.*"
    return None


def import_edges(root: Path, package: str) -> list:
    """Every import of one of ``package``'s modules by another, wherever it stands in the module (top level,
    functions, methods), relative imports resolved, plus ``import_module`` calls that name one."""
    known = modules(root, package)
    edges = []
    for name, path in known.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                # ``from pkg import sub`` imports the module pkg.sub where there is one, else a name of pkg
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names]
            elif isinstance(node, ast.Call) and (dynamic := _dynamic(node)):
                targets = [dynamic]
            for target in targets:
                if target.split(".")[0] != package:
                    continue
                resolved = target if target.endswith(".*") else _resolve(target, known)
                if resolved and resolved != name:
                    edges.append(Edge(name, node.lineno, resolved))
    return edges


def task_packages(root: Path, package: str) -> list:
    """The task packages: every sub-package of ``<package>/tasks/``."""
    return sorted(f"{package}.tasks.{p.name}" for p in (root / "tasks").iterdir() if (p / "__init__.py").exists())


def _inside(module: str, pkg: str) -> bool:
    return module == pkg or module.startswith(pkg + ".")


def task_imports_from_outside(edges: list, packages: list, sanctioned: set = frozenset(),
                              builds_on: dict | None = None) -> list:
    """'module:line imports target' for every import of a task package by a module outside it (a dynamic import
    under ``<package>.tasks.*`` counts as importing every task package), but a task package's imports of the ones
    ``builds_on`` (task package -> task packages) declares for it."""
    bad = []
    for e in edges:
        if e.target.endswith(".*"):
            prefix = e.target[:-2]
            hit = [p for p in packages if _inside(p, prefix) or _inside(prefix, p)]
            if hit and e.source not in sanctioned:
                bad.append(f"{e.source}:{e.line} imports {e.target} dynamically")
            continue
        owner = next((p for p in packages if _inside(e.target, p)), None)
        declared = any(_inside(e.source, p) and owner in deps for p, deps in (builds_on or {}).items())
        if owner and not _inside(e.source, owner) and not declared:
            bad.append(f"{e.source}:{e.line} imports {e.target}")
    return bad


def cycles(edges: list) -> list:
    """The import cycles (Tarjan's strongly connected components of more than one module, or a module that
    imports itself), each as its sorted modules. Dynamic imports are not edges: they name no one module."""
    graph = {}
    for e in edges:
        if not e.target.endswith(".*"):
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_report(found: list, edges: list) -> str:
    lines = []
    for component in found:
        inside = [f"{e.source}:{e.line} -> {e.target}" for e in edges
                  if e.source in component and e.target in component]
        lines.append(f"cycle among {', '.join(component)}: {'; '.join(inside)}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def edges():
    return import_edges(PACKAGE, "advbench")


def test_the_walker_sees_the_imports_it_must(edges):
    pairs = {(e.source, e.target) for e in edges}
    assert ("advbench.tasks.detection.task", "advbench.tasks.base") in pairs  # a top-level from-import
    assert ("advbench.data", "advbench.tasks.registry") in pairs  # from advbench.tasks import registry
    assert ("advbench.tasks.base", "advbench.data.loaders") in pairs  # inside a method (Task.augment)
    assert ("advbench.tasks.registry", "advbench.tasks.*") in pairs  # the registry's dynamic import
    assert task_packages(PACKAGE, "advbench") == [f"advbench.tasks.{p}" for p in
                                                  ("classification", "detection", "segmentation", "text")]
    assert len(edges) > 200


def test_no_module_outside_a_task_package_imports_it(edges):
    bad = task_imports_from_outside(edges, task_packages(PACKAGE, "advbench"), SANCTIONED_DYNAMIC, BUILDS_ON)
    assert not bad, "the core reaches tasks through advbench.tasks (registry, base), never a task package:\n" + \
        "\n".join(bad)


def test_no_import_cycle(edges):
    found = cycles(edges)
    assert not found, _cycle_report(found, edges)


def test_the_checker_catches_planted_violations(tmp_path):
    files = {
        "__init__.py": "",
        "tasks/__init__.py": "from fake.tasks.registry import register\n",
        "tasks/base.py": "",
        "tasks/registry.py": "import importlib\n\ndef load(n):\n    importlib.import_module(f'fake.tasks.{n}')\n",
        "tasks/toy/__init__.py": "from fake.tasks.base import *\nfrom .task import Toy\n",
        "tasks/toy/task.py": "from ..base import *\n",
        "core.py": "import fake.tasks\n\n\ndef run():\n    from fake.tasks.toy import Toy\n    return Toy\n",
        "sneaky.py": "import importlib\nimportlib.import_module('fake.tasks.toy.task')\n",
        "a.py": "import fake.b\n",
        "b.py": "def f():\n    from . import a\n",
        "tasks/other/__init__.py": "from fake.tasks.toy.task import *\n",
    }
    for name, text in files.items():
        (tmp_path / "fake" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fake" / name).write_text(text)
    planted = import_edges(tmp_path / "fake", "fake")
    packages = task_packages(tmp_path / "fake", "fake")
    assert packages == ["fake.tasks.other", "fake.tasks.toy"]
    assert sorted(task_imports_from_outside(planted, packages, {"fake.tasks.registry"})) == [
        "fake.core:5 imports fake.tasks.toy", "fake.sneaky:2 imports fake.tasks.toy.task",
        "fake.tasks.other:1 imports fake.tasks.toy.task"]
    declared = {"fake.tasks.other": {"fake.tasks.toy"}}  # a task package that builds on another, declared
    assert len(task_imports_from_outside(planted, packages, {"fake.tasks.registry"}, declared)) == 2
    assert "fake.tasks.registry:4 imports fake.tasks.* dynamically" in task_imports_from_outside(planted, packages)
    assert cycles(planted) == [["fake.a", "fake.b"]]


# --- what the tasks declare names real things -------------------------------------------------------------------
def _dataset_options() -> dict:
    """{dataset.name: [options of conf/dataset/ that set it]}."""
    named = {}
    for path in sorted((CONF / "dataset").glob("*.yaml")):
        named.setdefault((yaml.safe_load(path.read_text()) or {}).get("name"), []).append(path.stem)
    return named


def test_every_task_declares_registered_modes_and_shipped_models():
    from advbench.training.modes import MODES
    shipped = {p.stem for p in (CONF / "model").glob("*.yaml")}
    assert tasks() and shipped
    for key, cls in tasks().items():
        assert cls.key == key
        assert set(cls.modes) <= set(MODES), f"{key}.modes: {set(cls.modes) - set(MODES)} not in MODES"
        assert cls.models and set(cls.models) <= shipped, f"{key}.models: {set(cls.models) - shipped} not shipped"
        assert len(cls.metrics) == 2 and cls.terms, f"{key}: metrics is (clean, robust); terms is not empty"


def test_every_data_set_has_an_option_and_every_option_a_data_set():
    named, registered = _dataset_options(), sources()
    assert len(registered) >= 20
    assert not set(registered) - set(named), f"no conf/dataset/ option sets name: {set(registered) - set(named)}"
    unknown = set(named) - set(registered)
    assert not unknown, f"conf/dataset/ options name unregistered data sets: {unknown}"
    for name, (_, task) in registered.items():
        assert task in tasks(), f"dataset.name={name} poses unregistered task {task}"


# --- a task from outside the core: keypoints --------------------------------------------------------------------
class Keypoints(Task):
    """One (x, y) point in [0,1]² per image; the model outputs two numbers; an example is still correct while its
    prediction lies within ``radius`` of the point (PCK, the percentage of correct keypoints)."""

    name = "keypoints"
    terms = ("mse",)
    metrics = ("clean_pck", "robust_pck")
    modes = ("standard", "adversarial")
    models = ("mlp",)
    radius = 0.1
    draws_examples = False
    draws_saliency = False

    @classmethod
    def check_training_targets(cls, targets, dataset: str) -> None:
        """Refuse anything but points: an (N, 2) float tensor in [0,1]."""
        if not (targets.is_floating_point() and targets.shape[1:] == (2,) and 0 <= targets.min() <= targets.max() <= 1):
            raise AdvbenchError(f"dataset={dataset}: keypoints are (x, y) pairs in [0,1]")

    def loss(self, outputs, targets) -> dict:
        """{"mse": per-example squared distance}."""
        return {"mse": (outputs.float() - targets).pow(2).sum(1)}

    def correct(self, outputs, targets) -> torch.Tensor:
        """Per example: the predicted point lies within ``radius`` of the true one."""
        return (outputs.float() - targets).norm(dim=1) <= self.radius

    def summarize(self, flags: dict, records=None) -> dict:
        """PCK clean and at the per-example worst case over the attacks."""
        mean = lambda f: f.sum().item() / max(len(f), 1)  # noqa: E731
        by_attack = {name: mean(f) for name, f in flags.items() if name != "clean"}
        return {"n_examples": len(flags["clean"]), "clean_pck": mean(flags["clean"]),
                "robust_pck": mean(worst_case(flags)) if by_attack else None, "robust_pck_by_attack": by_attack}


def centroids(cfg) -> Source:
    """scikit-learn's digits, each labelled with its intensity centroid (x, y) in [0,1]²: a computed keypoint."""
    from sklearn.datasets import load_digits
    images = torch.tensor(load_digits().images / 16.0, dtype=torch.float32)[:, None]
    centre = (torch.arange(8) + 0.5) / 8
    mass = images.sum((1, 2, 3))
    points = torch.stack([(images.sum((1, 2)) * centre).sum(1), (images.sum((1, 3)) * centre).sum(1)], 1)
    points = (points / mass[:, None]).clamp(0, 1)
    return Source((images[:1200], points[:1200]), (images[1200:], points[1200:]), classes=["x", "y"])


@pytest.fixture
def keypoints(tmp_path):
    """The keypoints task and its data set registered, with its dataset option in a config folder of its own."""
    register("keypoints", Keypoints, {"keypoints": centroids})
    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "keypoints.yaml").write_text("name: keypoints\nval_size: 100\nmean: [0.3053]\nstd: [0.3760]\n")
    yield tmp_path / "conf"
    unregister("keypoints")


def test_a_new_task_runs_through_the_cli_with_no_edit_to_the_core(keypoints, tmp_path):
    common = ["progress=false", "threads=1", "eval=pgd20", "eval.attacks.pgd20.steps=3", "eval.n_examples=50"]
    # the data set's option comes from the folder the fixture wrote, as a user's own config folder would
    cli(f"hydra.searchpath=[file://{keypoints}]", "dataset=keypoints", "model=mlp", "model.hidden=32", "epochs=1",
        "batch_size=32", "training=adversarial", "attack=pgd", "attack.steps=2", "val.attack.steps=2", "eps=0.1",
        *common, f"hydra.run.dir={tmp_path}/train", cwd=tmp_path, check=True)
    # the checkpoint's stored config names dataset=keypoints: an evaluation finds it through the registry
    cli("job=eval", f"checkpoint={tmp_path}/train", *common, "eval.attacks.pgd20.steps=5",
        f"hydra.run.dir={tmp_path}/eval", cwd=tmp_path, check=True)
    for run in ("train", "eval"):
        results = json.loads((tmp_path / run / "results.json").read_text())
        assert results["metric_names"] == {"clean": "clean_pck", "robust": "robust_pck"}
        assert results["n_examples"] == 50 and results["classes"] == ["x", "y"]
        assert 0 <= results["robust_pck"] <= results["clean_pck"] <= 1
        assert set(results["robust_pck_by_attack"]) == {"pgd20"}
    trained = json.loads((tmp_path / "train" / "results.json").read_text())
    flags = np.load(tmp_path / "train" / "robust_flags.npz")  # the per-example flags the task summarized
    assert sorted(flags.files) == ["clean", "pgd20", "worst_case"]
    assert (flags["worst_case"] <= flags["clean"]).all()
    assert flags["clean"].mean() == pytest.approx(trained["clean_pck"])
    assert flags["worst_case"].mean() == pytest.approx(trained["robust_pck"])
