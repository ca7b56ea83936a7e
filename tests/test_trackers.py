"""The logger group: csv, tensorboard, mlflow and wandb files written during the run, read back with the trackers'
own tools: hyperparameters as params (never metrics), metrics per epoch, figures, and a resume continuing the run."""
import csv
import importlib
import json
import logging
import struct
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


def test_tensorboard_tracker_writes_scalars_figures_and_the_hparams_view_in_the_run_directory(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cli(*RUN, "logger=tensorboard", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"val/robust_acc", "train/loss", "train/lr", "test/robust_acc"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/robust_acc")] == [1, 2]
    assert {"adversarial_examples", "curves"} <= set(tags["images"])
    assert any(tag.startswith("config") for tag in tags["tensors"])
    # Settings are hyperparameters, never scalars.
    assert not [t for t in tags["scalars"] if t.split("/")[-1] in ("seed", "threads", "world_size", "epoch")
                or ".steps" in t or "eps.value" in t]
    session, experiment = hparams(events)
    assert session["seed"].number_value == 0 and session["attack.steps"].number_value == 1
    assert session["dataset.name"].string_value == "synthetic" and session["model._target_"].string_value
    assert "test/robust_acc" in experiment and "val/robust_acc" in experiment
    # The HParams view lists this run once, under its own directory: no run directory beside it.
    assert [p.name for p in (tmp_path / "run" / "tensorboard").iterdir() if p.is_dir()] == []


def test_mlflow_tracker_logs_the_config_as_params_metrics_per_epoch_and_figures(tmp_path):
    pytest.importorskip("mlflow")
    cli(*RUN, "logger=mlflow", f"logger.mlflow_uri={tmp_path}/store", f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path, check=True)
    client, (run,) = mlflow_runs(tmp_path / "store")
    assert run.data.params["model._target_"] == "advbench.models.mlp"
    assert run.data.params["seed"] == "0" and run.data.params["attack.steps"] == "1"
    history = client.get_metric_history(run.info.run_id, "val_robust_acc")
    assert [m.step for m in history] == [1, 2]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert run.data.metrics["test.robust_acc"] == pytest.approx(results["robust_acc"])
    # Settings are params, never metrics; the epoch is the metrics' step.
    settings = [k for k in run.data.metrics if k == "epoch"
                or k.split(".")[-1] in ("seed", "threads", "world_size", "steps", "value", "eps", "alpha")]
    assert not settings, settings
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "summary.md", "adversarial_examples.png", "curves.png"} <= artifacts
    assert run.info.status == "FINISHED"


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


def test_wandb_tracker_runs_offline_with_the_config_metrics_and_figures(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli(*RUN, "logger=wandb", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (path,) = offline.glob("run-*.wandb")
    run = wandb_run(path)
    assert run["config"]["seed"] == 0 and run["config"]["attack"]["steps"] == 1
    assert run["config"]["dataset"]["name"] == "synthetic"
    assert sorted(run["history"]) == [1, 2] and "val/robust_acc" in run["history"][1]
    assert {"figures/adversarial_examples", "figures/curves"} <= set(run["history"][2])
    assert "test/robust_acc" in run["summary"] and "test/seed" not in run["summary"]
    assert any(p.suffix == ".png" for p in (offline / "files" / "media").rglob("*"))  # the figures themselves


def test_a_resumed_run_continues_its_tracker_runs(tmp_path, monkeypatch):
    for package in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(package)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    tracked = [*RUN, "logger.trackers=[tensorboard,mlflow,wandb]", f"logger.mlflow_uri={tmp_path}/store",
               f"hydra.run.dir={run_dir}"]
    code, err = cli(*tracked, "stop_after_epoch=1", cwd=tmp_path)
    assert code != 0 and (run_dir / "status").read_text().startswith("interrupted"), err
    ids = json.loads((run_dir / "trackers.json").read_text())
    client, (run,) = mlflow_runs(tmp_path / "store")
    assert run.info.run_id == ids["mlflow"]["run_id"] and run.info.status == "KILLED"
    earlier(run_dir / "tensorboard")

    cli(*tracked, f"resume={run_dir}", cwd=tmp_path, check=True)
    assert json.loads((run_dir / "trackers.json").read_text()) == ids
    client, (run,) = mlflow_runs(tmp_path / "store")  # still one run: the same, reopened
    assert run.info.run_id == ids["mlflow"]["run_id"] and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_robust_acc")] == [1, 2]
    assert "test.robust_acc" in run.data.metrics and run.data.params["seed"] == "0"

    # Each part its own offline folder (wandb adds -1 to the second's name if both started within one second).
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{ids['wandb']['id']}*"))
    parts = sorted((wandb_run(next(p.glob("run-*.wandb"))) for p in offline), key=lambda r: min(r["history"]))
    assert [r["id"] for r in parts] == [ids["wandb"]["id"]] * 2
    assert [sorted(r["history"]) for r in parts] == [[1], [2]]

    # One event directory; the resume's purge_step leaves each epoch once.
    assert [p.name for p in (run_dir / "tensorboard").iterdir() if p.is_dir()] == []
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    for tag in ("val/robust_acc", "train/loss"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2]
    assert [e.step for e in events.Tensors("config/text_summary")] == [0]
    assert hparams(events)[0]["seed"].number_value == 0


def test_tensorboard_hides_what_an_interrupted_run_logged_after_its_last_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from advbench.errors import Interrupted
    fit = importlib.import_module("advbench.training.fit")  # the module: advbench.training.fit is also its function
    saved = fit.save_checkpoint

    def stopped_before_saving_epoch_2(path, *args, epoch=None, **kwargs):
        if path.name == "last.pt" and epoch == 2:  # epoch 2 went to the trackers, never into last.pt
            raise Interrupted("killed")
        saved(path, *args, epoch=epoch, **kwargs)

    run_dir = tmp_path / "run"
    tracked = [*RUN, "logger=tensorboard", f"hydra.run.dir={run_dir}"]
    with monkeypatch.context() as patch:
        patch.setattr(fit, "save_checkpoint", stopped_before_saving_epoch_2)
        code, err = cli(*tracked, cwd=tmp_path)
    assert code != 0, err
    earlier(run_dir / "tensorboard")
    assert [e.step for e in EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("train/loss")] == [1, 2]

    cli(*tracked, f"resume={run_dir}", cwd=tmp_path, check=True)
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(e.step, e.value) for e in events.Scalars("train/seconds")] == [
        (r["epoch"], pytest.approx(r["seconds"])) for r in rows]  # epoch 2 once: the resumed run's


def test_a_resume_whose_mlflow_run_is_gone_starts_a_new_one(tmp_path, caplog):
    pytest.importorskip("mlflow")
    from omegaconf import OmegaConf

    from advbench.runtime.trackers import Trackers
    (tmp_path / "trackers.json").write_text(json.dumps({"mlflow": {"run_id": "0" * 32}, "wandb": {"id": "kept"}}))
    settings = OmegaConf.create({"mlflow_uri": str(tmp_path / "store"), "experiment": "advbench"})
    with caplog.at_level(logging.WARNING):
        trackers = Trackers(["mlflow"], tmp_path, settings, resumed=1)
    trackers.close()
    assert "cannot reopen run 00000000" in caplog.text
    ids = json.loads((tmp_path / "trackers.json").read_text())
    _, (run,) = mlflow_runs(tmp_path / "store")
    assert ids["mlflow"]["run_id"] == run.info.run_id != "0" * 32
    assert ids["wandb"] == {"id": "kept"}  # a tracker this command did not choose keeps its entry


def earlier(folder) -> None:
    """Date the event file in ``folder`` a second earlier: TensorBoard reads event files in name order (time, host,
    pid, a per-process count), and in one test process an interrupted run and its resume may start within a second."""
    (events,) = folder.iterdir()
    stamp = events.name.split(".")[3]
    events.rename(events.with_name(events.name.replace(f".{stamp}.", f".{int(stamp) - 1:010d}.")))


def hparams(events) -> tuple:
    """(the session's hyperparameters, the metric tags of the experiment) from the HParams plugin's summaries."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    return session.session_start_info.hparams, [m.name.tag for m in experiment.experiment.metric_infos]


def mlflow_runs(store) -> tuple:
    """(a client of the file store, the runs of its advbench experiment)."""
    import os

    from mlflow.tracking import MlflowClient
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(store.as_uri())
    experiment = client.get_experiment_by_name("advbench")
    return client, client.search_runs([experiment.experiment_id])


def wandb_run(path) -> dict:
    """An offline .wandb file read back: {"id", "config" (nested), "history" {step: keys}, "summary" keys}.

    The file is wandb's record log (LevelDB's log format after a 7-byte header): 32 KiB blocks of chunks, each with
    a 7-byte header (crc, length, type: 1 full, 2 first, 3 middle, 4 last) holding a serialized Record."""
    from wandb.proto import wandb_internal_pb2
    data, block, pos, chunk = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", path
    run = {"config": {}, "history": {}, "summary": set()}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record.FromString(chunk)
        chunk, which = b"", record.WhichOneof("record_type")
        if which == "run":
            run["id"] = record.run.run_id
        elif which == "config":
            run["config"] |= {u.key: json.loads(u.value_json) for u in record.config.update}
        elif which == "history":
            keys = {i.nested_key[0] if i.nested_key else i.key for i in record.history.item}
            run["history"].setdefault(record.history.step.num, set()).update(k for k in keys if k[0] != "_")
        elif which == "summary":
            run["summary"] |= {u.nested_key[0] if u.nested_key else u.key for u in record.summary.update}
    return run
