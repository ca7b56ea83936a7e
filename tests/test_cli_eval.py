"""``job=eval`` through the real CLI: checkpoint round trip, AutoAttack preset, curves, images, bad checkpoints."""
import argparse
import csv
import json

import pytest
import torch

from helpers import advbench, cli, png_size


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small digits model trained through the CLI, with its run directory."""
    root = tmp_path_factory.mktemp("train")
    advbench("dataset=digits", "model=mlp", "model.hidden=32", "epochs=3", "progress=false", "threads=1",
             "eval.n_examples=60", f"hydra.run.dir={root}/run", cwd=root)
    return root / "run"


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_eval_of_a_checkpoint_is_labelled_with_the_evaluation_that_ran(tmp_path):
    # Without eval=, the checkpoint's own evaluation (quick: FGSM, PGD-10) runs, and is named so, not pgd20.
    cli("dataset=digits", "model=mlp", "model.hidden=32", "epochs=1", "progress=false", "threads=1", "eval=quick",
        "eval.n_examples=30", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    for given, name in (((), "quick"), (("eval=pgd20", "eval.attacks.pgd20.steps=2"), "pgd20")):
        cli("job=eval", f"checkpoint={tmp_path}/run", *given, "progress=false", f"hydra.run.dir={tmp_path}/{name}",
            cwd=tmp_path, check=True)
        evaluated = results(tmp_path / name)
        assert evaluated["evaluation"]["preset"] == evaluated["choices"]["eval"] == name
        assert list(evaluated["robust_acc_by_attack"]) == (["fgsm", "pgd10"] if name == "quick" else ["pgd20"])


def test_eval_of_a_checkpoint_reproduces_the_training_runs_evaluation(trained_run, tmp_path):
    for i, checkpoint in enumerate((trained_run, trained_run / "model.pt")):
        cli("job=eval", f"checkpoint={checkpoint}", "progress=false", f"hydra.run.dir={tmp_path}/e{i}",
            cwd=tmp_path, check=True)
        trained, evaluated = results(trained_run), results(tmp_path / f"e{i}")
        for key in ("clean_acc", "robust_acc", "robust_acc_by_attack", "n_examples", "eps"):
            assert evaluated[key] == trained[key], key
        assert evaluated["job"] == "eval" and evaluated["choices"]["model"] == "mlp"
        assert not (tmp_path / f"e{i}" / "model.pt").exists()


def test_the_old_spelling_task_eval_still_evaluates_with_a_deprecation_warning(trained_run, tmp_path, caplog):
    """``task=`` named the job before it came to name the problem: it keeps working, with one warning line."""
    with caplog.at_level("WARNING", logger="advbench"):
        code, _ = cli("task=eval", f"checkpoint={trained_run}", "progress=false", "eval.n_examples=20",
                      f"hydra.run.dir={tmp_path}/old", cwd=tmp_path)
    assert code == 0 and results(tmp_path / "old")["job"] == "eval"
    assert "task=eval is deprecated: write job=eval" in caplog.text


def test_a_checkpoint_whose_config_says_task_for_the_job_evaluates(trained_run, tmp_path):
    state = torch.load(trained_run / "model.pt", weights_only=True)
    state["config"]["task"] = state["config"].pop("job")  # as an older advbench stored it
    torch.save(state, tmp_path / "old.pt")
    cli("job=eval", f"checkpoint={tmp_path}/old.pt", "progress=false", f"hydra.run.dir={tmp_path}/e", cwd=tmp_path,
        check=True)
    assert results(tmp_path / "e")["clean_acc"] == results(trained_run)["clean_acc"]


def test_eval_default_directory_names_the_checkpoints_run(trained_run, tmp_path):
    advbench("job=eval", f"checkpoint={trained_run}", "progress=false", "eval.n_examples=20", cwd=tmp_path)
    (out,) = (tmp_path / "outputs").iterdir()
    assert out.name == f"eval_{trained_run.parent.name}_run"


def test_autoattack_preset_with_curve_and_examples(trained_run, tmp_path):
    out = tmp_path / "aa"
    cli("job=eval", f"checkpoint={trained_run}", "eval=autoattack", "eval.n_examples=60",
        "eval.attacks.apgd_ce.steps=20", "eval.attacks.apgd_t.steps=20", "eval.attacks.apgd_t.n_targets=3",
        "eval.attacks.fab_t.steps=10", "eval.attacks.fab_t.n_targets=3", "eval.attacks.square.steps=200",
        "eval.eps_list=[0.1,2/255,0.05]", "eval.save_examples=6", "eps=0.05", "progress=false",
        f"hydra.run.dir={out}", cwd=tmp_path, check=True)
    res = results(out)
    assert list(res["robust_acc_by_attack"]) == ["apgd_ce", "apgd_t", "fab_t", "square"] and res["cascade"] is True
    by = res["robust_acc_by_attack"]
    assert res["robust_acc"] == by["square"] <= by["fab_t"] <= by["apgd_t"] <= by["apgd_ce"]  # cumulative
    assert res["evaluation"] == {"preset": "autoattack", "name": "autoattack", "version": "standard",
                                 "ran": ["apgd_ce", "apgd_t", "fab_t", "square"]}
    assert res["eps"]["value"] == 0.05 and res["attacks"]["apgd_t"]["loss"] == "dlr"
    assert res["attacks"]["square"]["steps"] == 200 and res["attacks"]["fab_t"]["targeted"] is True
    assert set(res["sanity"]) >= {"random_forward", "outputs_probabilities", "zero_grad_frac", "pgd20_gap",
                                  "warnings"}
    rows = list(csv.DictReader((out / "robustness_curve.csv").open()))
    assert [r["eps"] for r in rows] == ["2/255", "0.05", "0.1"]
    assert float(rows[1]["robust_acc"]) == res["robust_acc"]  # the run's eps: the main result's own point
    accs = [float(r["robust_acc"]) for r in rows]
    # eps 2/255 < 0.05 < 0.1: each attack is stronger than the last, up to a margin for its random start
    assert all(later <= earlier + 0.05 for earlier, later in zip(accs, accs[1:]))
    assert accs[0] <= float(rows[0]["clean_acc"])
    for png in ("robustness_curve.png", "adversarial_examples.png"):
        width, height = png_size(out / png)
        assert width > 200 and height > 150
    flags = __import__("numpy").load(out / "robust_flags.npz")
    assert flags["worst_case"].mean() == pytest.approx(res["robust_acc"])
    summary = (out / "summary.md").read_text()
    assert f"{100 * res['robust_acc']:.2f}%" in summary and "eps = 0.05 (linf)" in summary
    assert "`autoattack` (standard)" in summary and "| square |" in summary


def bad_checkpoints(tmp_path):
    torch.save(argparse.Namespace(weights=torch.zeros(2)), tmp_path / "pickle.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    torch.save({"weights": "not a tensor"}, tmp_path / "foreign.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other_model.pt")
    return {
        "missing": (tmp_path / "nothing.pt", "no such file or run directory"),
        "pickle": (tmp_path / "pickle.pt", "weights_only=True"),
        "corrupt": (tmp_path / "corrupt.pt", "not a readable torch file"),
        "foreign": (tmp_path / "foreign.pt", "neither an advbench checkpoint"),
        "other_model": (tmp_path / "other_model.pt", "do not fit model="),
    }


@pytest.mark.parametrize("case", ["missing", "pickle", "corrupt", "foreign", "other_model", "mismatch", "none"])
def test_bad_checkpoints_get_a_one_line_error(trained_run, tmp_path, case):
    if case == "mismatch":
        args, expected = [f"checkpoint={trained_run}", "model.hidden=7"], "do not fit model=advbench.models.mlp"
    elif case == "none":
        args, expected = [], "job=eval needs checkpoint="
    else:
        path, expected = bad_checkpoints(tmp_path)[case]
        args = [f"checkpoint={path}", "dataset=digits", "model=mlp"]
    proc = advbench("job=eval", *args, "progress=false", f"hydra.run.dir={tmp_path}/e", cwd=tmp_path,
                    check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if expected in line]
    assert len(lines) == 1 and "checkpoint" in lines[0] and len(lines[0]) < 500, proc.stderr
    assert (trained_run / "model.pt").exists()  # nothing already written is lost


def test_eval_takes_a_plain_state_dict_and_a_torchscript_file(trained_run, tmp_path):
    from advbench.models import mlp
    state = torch.load(trained_run / "model.pt", weights_only=True)
    torch.save(state["state_dict"], tmp_path / "weights.pt")
    model = mlp((1, 8, 8), 10, [0.3053], [0.3760], hidden=32)
    model.load_state_dict(state["state_dict"])
    torch.jit.save(torch.jit.script(model.eval()), tmp_path / "scripted.pt")
    same = ["dataset=digits", "eval.n_examples=60", "progress=false"]
    cli("job=eval", f"checkpoint={tmp_path}/weights.pt", "model=mlp", "model.hidden=32", *same,
        f"hydra.run.dir={tmp_path}/sd", cwd=tmp_path, check=True)
    cli("job=eval", f"checkpoint={tmp_path}/scripted.pt", *same, f"hydra.run.dir={tmp_path}/ts", cwd=tmp_path,
        check=True)
    trained = results(trained_run)
    for run in ("sd", "ts"):  # the same weights: the training run's numbers, to the last digit
        assert results(tmp_path / run)["robust_acc_by_attack"] == trained["robust_acc_by_attack"], run
