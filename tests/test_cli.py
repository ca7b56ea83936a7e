"""End to end through the real CLI in a subprocess, on tiny data."""
import json

import pytest
import torch

from helpers import TINY, advbench, cli, metrics_without_timing, one_line_error


def run_dirs(root):
    return sorted(p.parent for p in root.rglob("results.json"))


def test_run_writes_every_file_with_sane_values(tmp_path):
    advbench(*TINY, "attack=pgd", "attack.steps=3", "eps=8/255", "seed=3", cwd=tmp_path)
    (run,) = run_dirs(tmp_path / "outputs")
    # The directory names the combination (dataset, model, training, attack, eps, seed), then a timestamp.
    assert run.parent.name == "synthetic_mlp_adversarial_pgd_eps8_255_seed3"
    assert {"config.yaml", "overrides.yaml", "hydra.yaml"} <= {p.name for p in (run / ".hydra").iterdir()}
    assert (run / "advbench.log").read_text().count("epoch") >= 2

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["train_loss"] > 0 and row["seconds"] > 0 and row["images_per_s"] > 0 and row["lr"] > 0
        for key in ("train_clean_acc", "train_adv_acc", "val_clean_acc", "val_robust_acc"):
            assert 0 <= row[key] <= 1
        assert row["val_robust_acc"] <= row["val_clean_acc"]

    results = json.loads((run / "results.json").read_text())
    assert results["eps"] == {"given": "8/255", "value": pytest.approx(8 / 255)}
    assert results["seed"] == 3 and results["n_examples"] == 100 and results["device"] == "cpu"
    assert results["clean_acc"] > 0.5  # the synthetic task is easy
    assert results["robust_acc"] <= results["clean_acc"]
    assert set(results["robust_acc_by_attack"]) == {"pgd20"}
    assert results["attacks"]["pgd20"] | {"eps": None} == {
        "name": "pgd", "norm": "linf", "eps": None, "alpha": pytest.approx(2.5 * 8 / 255 / 20), "steps": 20,
        "random_start": True, "restarts": 1, "targeted": False, "bn_mode": "eval", "loss": "ce", "n_targets": 9,
        "target": "input", "terms": None, "goal": "truth", "relabel": "none", "descend": False,
        "normalize_terms": False, "eot": 1}
    assert results["cascade"] is True and results["sanity"]["warnings"] == []
    assert {"clean", "pgd20", "worst_case"} == set(__import__("numpy").load(run / "robust_flags.npz").files)
    assert results["choices"] == {"dataset": "synthetic", "model": "mlp", "attack": "pgd",
                                  "training": "adversarial", "optimizer": "adam", "eval": "pgd20", "logger": "none"}
    assert set(results["versions"]) == {"python", "torch", "torchvision", "advbench"}
    assert results["wall_seconds"] > 0

    checkpoint = torch.load(run / "model.pt", weights_only=True)
    assert checkpoint["config"]["eps"] == "8/255" and checkpoint["config"]["attack"]["name"] == "pgd"
    assert any(k.endswith("weight") for k in checkpoint["state_dict"])
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temp files


def test_multirun_over_two_eps_writes_two_directories(tmp_path):
    proc = advbench("-m", *TINY, "epochs=1", "eps=2/255,8/255", f"hydra.sweep.dir={tmp_path}/sweep",
                    cwd=tmp_path)
    runs = run_dirs(tmp_path / "sweep")
    assert len(runs) == 2, proc.stderr
    # Each job's directory is named by its overrides ('/' made path-safe), the seed one level below.
    assert all(r.name == "seed=0" for r in runs)
    assert "eps=2_255" in runs[0].parent.name.split(",") and "eps=8_255" in runs[1].parent.name.split(",")
    assert all((r / "status").read_text() == "finished\n" for r in runs)
    given = [json.loads((r / "results.json").read_text())["eps"]["given"] for r in runs]
    assert given == ["2/255", "8/255"]


def test_same_seed_gives_identical_metrics(tmp_path):
    for name in ("a", "b"):
        advbench(*TINY, "training=mixed", "seed=1", f"hydra.run.dir={tmp_path}/{name}", cwd=tmp_path)
    first, second = (metrics_without_timing(tmp_path / n) for n in ("a", "b"))
    assert first == second
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("a", "b")]
    assert [r["robust_acc_by_attack"] for r in results] == [results[0]["robust_acc_by_attack"]] * 2
    advbench(*TINY, "training=mixed", "seed=2", f"hydra.run.dir={tmp_path}/c", cwd=tmp_path)
    assert metrics_without_timing(tmp_path / "c") != first


@pytest.mark.parametrize("override, expected", [
    ("eps=abc", "eps='abc'"),
    ("eps=-0.1", "eps="),
    ("eps=2", "eps=2 is above 1"),
    ("attack=nope", "Could not find 'attack/nope'"),
    ("foo=1", "Could not override 'foo'"),
    ("epochs=abc", "epochs"),
    ("amp=fp8", "amp"),
    ("attack=none", "training=adversarial accepts attack=fgsm, fgsm_rs, pgd, fgm; attack=none given"),
    ("device=cuda", "device=cuda"),
    ("dataset=mnist", "dataset=mnist"),
])
def test_bad_input_exits_nonzero_with_a_one_line_message(tmp_path, override, expected):
    if override == "device=cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is present")
    extra = [f"dataset.root={tmp_path}/none"] if override == "dataset=mnist" else []
    args = [a for a in TINY if a.split("=")[0] != override.split("=")[0]]
    code, err = cli(*args, override, *extra, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert code == 2
    one_line_error(err, expected)
    assert not (tmp_path / "run" / "results.json").exists()
