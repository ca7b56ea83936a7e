"""The command line's help (options grouped by the tasks they serve, the keys that apply to the choices), its
shell completion without torch, and the logs' readable numbers."""
import os
import subprocess
import sys
from functools import lru_cache

import pytest
import yaml

from advbench.checks import check_config
from advbench.cli import help_text, overrides_of, wants_help
from advbench.errors import AdvbenchError
from advbench.options import GROUPS, applies, by_task, options, serves
from advbench.run_config import plain
from advbench.runtime.readable import number, row
from advbench.tasks import sources, task_class, tasks
from advbench.training.modes import MODES
from conftest import CONF, compose_config
from test_config import EXTRA, PARTNERS


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "advbench", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@lru_cache(maxsize=None)
def shown(*args):
    """``advbench <args> --help`` in a subprocess, once per command line: (exit code, stdout)."""
    proc = run(*args, "--help")
    return proc.returncode, proc.stdout


def blocks(out: str) -> dict:
    """The options-by-task section: {heading's first word: {group: [options]}}."""
    section = out.split("== Options by task ==")[1].split("== Keys for these choices ==")[0]
    found, current = {}, None
    for line in section.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = found.setdefault(line.split(" (")[0].rstrip(":"), {})
        elif line.startswith("  ") and current is not None:
            group, names = line.strip().split(": ", 1)
            current[group] = names.split(", ")
    return found


def keys_shown(out: str) -> dict:
    """The keys section, read back as YAML."""
    body = out.split("== Keys for these choices ==")[1].split("Hydra's own options")[0]
    return yaml.safe_load("\n".join(body.splitlines()[3:]))


def test_help_starts_with_what_the_tool_does_its_groups_and_examples():
    code, out = shown()
    assert code == 0
    assert out.startswith("advbench: adversarial training and robustness evaluation in PyTorch.")
    assert "advbench -m eps=2/255,4/255,8/255" in out and "+experiment=" in out
    every = blocks(out)["every task"]
    assert every["logger"] == ["csv", "many", "mlflow", "none", "tensorboard", "wandb"]
    assert every["hparams_search"] == ["robust_optuna"]


def test_help_groups_options_by_the_tasks_they_serve():
    """Each task's block lists its data sets (as the registry names them); an option that does not fit a task
    (FAB reads a classifier's logits) is not under it."""
    code, out = shown()
    found = blocks(out)
    assert code == 0 and list(found)[0] == "every task" and set(list(found)[1:]) == set(tasks())
    for key in tasks():
        posed = sorted(o for o in options("dataset") if sources()[yaml.safe_load(
            (CONF / "dataset" / f"{o}.yaml").read_text())["name"]][1] == key)
        assert found[key]["dataset"] == posed
    assert "fab" in found["classification"]["attack"] and "fab" not in found["detection"]["attack"]
    assert "tog_vanishing" in found["detection"]["attack"] and "segmentation" in found["segmentation"]["eval"]
    assert "(this config's: dataset=fashion_mnist)" in out.split("\nclassification")[1].splitlines()[0]


@pytest.mark.parametrize("args, present, absent", [
    ((), ["eval.attacks.pgd20.steps", "training.guard.enabled", "dataset.val_size", "attack.random_start"],
     ["eval.det_score", "eval.det_recall", "eval.seg_threshold", "attack.goal", "attack.terms", "dataset.n_scenes",
      "training.beta", "saliency", "checkpoint"]),
    (("dataset=digits_det", "model=yolo_tiny"), ["eval.det_score", "eval.det_recall", "attack.goal", "attack.terms",
                                                 "dataset.n_scenes", "val.attack.descend"],
     ["eval.seg_threshold", "dataset.root", "attack.target"]),
])
def test_help_shows_only_the_keys_that_apply_to_the_choices(args, present, absent):
    code, out = shown(*args)
    assert code == 0
    tree = keys_shown(out)

    def has(key):
        node = tree
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True
    assert [k for k in present if not has(k)] == [] and [k for k in absent if has(k)] == []


@pytest.mark.parametrize("overrides, present, absent", [
    (["dataset=digits_seg", "model=unet_tiny"], ["eval.seg_threshold"], ["eval.det_score", "eval.det_recall"]),
    (["training=mixed"], ["training.adv_weight", "training.guard.enabled"], ["training.beta", "training.replays"]),
    (["training=trades"], ["training.beta"], ["training.adv_weight"]),
    (["training=standard"], [], ["attack.name"]),  # clean training leaves the attack group unused
    (["job=eval", "checkpoint=x"], ["checkpoint"], ["saliency.n_examples", "attack.name"]),
    (["job=saliency"], ["checkpoint", "saliency.smoothgrad"], []),
    (["dataset=digits", "dataset.n_train=100"], ["dataset.n_train"], ["dataset.root", "dataset.max_len"]),
    (["dataset=synthetic_text", "model=textcnn", "training=mixed", "attack=fgm", "+eval.attacks.emb={name: pgd, "
      "target: embedding}"], ["attack.target", "eval.attacks.emb.target"], ["val.attack", "eval.attacks.pgd20"]),
])
def test_keys_that_apply_follow_the_chosen_options(overrides, present, absent):
    cfg = compose_config(overrides)
    with_choices = compose_config_with_choices(overrides)
    keys = applies(cfg, with_choices)
    under = lambda key: any(k == key or k.startswith(key + ".") for k in keys)  # noqa: E731
    assert [k for k in present if not under(k)] == [] and [k for k in absent if under(k)] == []


def compose_config_with_choices(overrides):
    from hydra import compose, initialize_config_module
    with initialize_config_module("advbench.conf", version_base="1.3"):
        return dict(compose("config", overrides=list(overrides), return_hydra_config=True).hydra.runtime.choices)


def test_help_in_process_names_an_option_of_another_task():
    text = help_text(["dataset=digits_det"])  # the default model is a classifier
    assert "# model=small_cnn does not serve detection: detection takes model=" in text and "yolo_tiny" in text


@pytest.mark.parametrize("argv, wanted, overrides", [
    (["--help"], True, []), (["-h", "dataset=digits"], True, ["dataset=digits"]),
    (["--help", "--cfg", "job", "-p", "dataset", "eps=1"], True, ["eps=1"]),
    (["-m", "eps=1,2", "~logger", "--help"], True, ["eps=1,2", "~logger"]),
    (["--help", "-cn", "other"], False, []), (["-sc", "query=bash"], False, ["query=bash"]),
    (["--hydra-help"], False, []), (["eps=1"], False, ["eps=1"]),
])
def test_which_command_lines_get_advbenchs_help(argv, wanted, overrides):
    assert wants_help(argv) == wanted and overrides_of(argv) == overrides


def test_help_with_a_bad_option_is_one_line_and_exit_code_2():
    proc = run("dataset=nope", "--help")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "dataset/nope" in proc.stderr, proc.stderr


def _with_partners(group, option, key, job="eval"):
    """``group=option`` composed with partners of task ``key`` and checked; the attack group trains under a mode
    that takes any attack, so that the attack is built."""
    partners = [p for p in PARTNERS.get(key, []) if p.split("=")[0] != group]
    if group == "attack":
        free = [m for m in task_class(key).modes if MODES[m].accepts is None]
        partners += [f"training={free[0]}"] if free else []
        job = "train" if free else job
    return check_config(plain(compose_config([*partners, f"{group}={option}", *EXTRA.get(option, []),
                                              f"job={job}"])))


OPTIONS = [(g, o) for g in GROUPS if g not in ("experiment", "hparams_search", "hydra/launcher") for o in options(g)]


@pytest.mark.parametrize("group, option", OPTIONS)
def test_serves_agrees_with_composing_and_checking(group, option):
    """Each task an option serves accepts it with that task's partners; for the groups that define a task's fit
    (data set, model, attack, training), every other task refuses it."""
    served = serves(group, option)
    assert served, f"{group}={option} serves no task"
    for key in served:
        assert _with_partners(group, option, key).task.key == key
    if group in ("dataset", "model", "attack", "training"):
        for key in set(tasks()) - set(served):
            with pytest.raises(AdvbenchError):
                _with_partners(group, option, key)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_an_experiment_serves_the_task_of_the_options_it_selects(experiment):
    checked = check_config(plain(compose_config([f"+experiment={experiment}"])))
    assert serves("experiment", experiment) == (checked.task.key,)


def test_a_task_registered_later_is_served_by_what_fits_it():
    """No task name is listed in advbench.options: a new task is served by the options its registry entry and
    attributes fit (here a classifier's twin that takes only clean training and the mlp)."""
    from advbench.tasks import register, unregister
    from advbench.tasks.classification import Classification

    class Twin(Classification):
        modes, models = ("standard",), ()
    register("twin", Twin)
    try:
        assert "twin" in serves("training", "standard") and "twin" not in serves("training", "adversarial")
        assert "twin" in serves("attack", "fab") and "twin" not in serves("model", "mlp")
        assert "twin" in by_task() and "twin" not in serves("dataset", "digits")
    finally:
        unregister("twin")


def test_the_cli_path_imports_no_torch_until_a_run_starts():
    # Tab completion goes through advbench.main; torch (seconds to import) waits for the run
    code = "import sys, advbench.main; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_a_run_without_detection_starts_without_torchvision_or_matplotlib():
    # torchvision (with the torch._dynamo it imports) costs a command's start about 2 s: only detectors, detection's
    # metrics and torchvision's data sets need it, and the detectors load when a config first names them;
    # matplotlib (0.5 s) waits for the first figure, so that a refused command or --help pays for neither
    code = ("import sys, advbench.experiment, advbench.models as models\n"
            "from advbench.runtime.outputs import versions\nfrom advbench.tasks import tasks\n"
            "tasks(); assert versions()['torchvision'] and 'torchvision' not in sys.modules\n"
            "assert 'matplotlib' not in sys.modules\n"
            "models.YoloTiny; sys.exit('torchvision' not in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_shell_completion_answers_options():
    out = run("-sc", "query=bash", env={"COMP_LINE": "advbench logger=ml"}).stdout
    assert out.split() == ["logger=mlflow"]


def test_logs_print_percentages_and_rates():
    assert number("val_robust_acc", 0.69188) == "69.19%" and number("images_per_s", 16270.4) == "16,270 img/s"
    assert number("seconds", 0.0712) == "0.071 s" and number("seconds", 0) == "0 s"
    expected = "train_loss 0.4137, seconds 3.0 s, lr 0.00123"
    assert row({"train_loss": 0.41372, "seconds": 3.04, "lr": 0.0012345}) == expected


def test_help_into_a_reader_that_stops_early_ends_quietly():
    """`advbench --help | head -1`: the closed pipe is the reader's choice, not an error with a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "advbench", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err


def test_help_names_the_completion_install_and_the_docs():
    out = shown()[1]
    assert 'eval "$(advbench -sc install=bash)"' in out and "docs/" in out
