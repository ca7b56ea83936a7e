"""The logger group: csv, tensorboard and mlflow files written during the run and readable by their own tools."""
import csv
import json
import sys

import pytest

from helpers import TINY, cli, one_line_error

RUN = [*TINY, "eval.save_examples=4"]


def test_csv_tracker_writes_each_epoch_the_config_and_the_results(tmp_path):
    cli(*RUN, "logger=csv", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    run = tmp_path / "run"
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["val_robust_acc"]) == pytest.approx(expected[1]["val_robust_acc"])
    with open(run / "csv" / "hparams.csv", newline="") as f:
        params = {r["key"]: r["value"] for r in csv.DictReader(f)}
    assert params["dataset.name"] == "synthetic" and params["epochs"] == "2"
    with open(run / "csv" / "results.csv", newline="") as f:
        final = next(csv.DictReader(f))
    results = json.loads((run / "results.json").read_text())
    assert float(final["robust_acc"]) == pytest.approx(results["robust_acc"])


def test_tensorboard_tracker_writes_scalars_config_and_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cli(*RUN, "logger=tensorboard", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"val/robust_acc", "train/loss", "train/lr", "test/robust_acc"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/robust_acc")] == [1, 2]
    assert "adversarial_examples" in tags["images"]
    assert any(tag.startswith("config") for tag in tags["tensors"])


def test_mlflow_tracker_fills_a_local_file_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    cli(*RUN, "logger=mlflow", f"logger.mlflow_uri={tmp_path}/store", f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path, check=True)
    client = MlflowClient((tmp_path / "store").as_uri())
    experiment = client.get_experiment_by_name("advbench")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["model._target_"] == "advbench.models.mlp"
    history = client.get_metric_history(run.info.run_id, "val_robust_acc")
    assert [m.step for m in history] == [1, 2]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert run.data.metrics["test.robust_acc"] == pytest.approx(results["robust_acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "summary.md", "adversarial_examples.png"} <= artifacts


def test_a_tracker_that_is_not_installed_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    code, err = cli(*RUN, "logger=mlflow", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert code == 2
    one_line_error(err, "logger=mlflow needs the mlflow package: pip install 'advbench[mlflow]'")


def test_an_unknown_tracker_is_a_one_line_error(tmp_path):
    code, err = cli(*RUN, "logger.trackers=[csv,neptune]", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert code == 2
    one_line_error(err, "logger.trackers: neptune unknown; expected csv, tensorboard, mlflow, wandb")
    assert not (tmp_path / "run" / "csv").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_wandb_tracker_runs_offline_without_a_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli(*RUN, "logger=wandb", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")
    assert records.stat().st_size > 0  # the run's history, for `wandb sync`
    assert any(p.suffix == ".png" for p in (offline / "files" / "media").rglob("*"))  # the figures
