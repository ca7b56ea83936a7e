"""results.csv: each task's results.json flattened into long rows that pandas.read_csv loads with usable dtypes."""
import json

import pandas as pd
import pytest
import yaml

from advbench.evaluation import tidy
from helpers import cli

SETTINGS = {"run": "seed=0", "advbench_version": "0.1.0", "job": "train", "task": "classification",
            "dataset": "digits", "model": "mlp", "training": "adversarial", "attack": "fgsm_rs", "eval": "pgd20",
            "eps": "8/255", "eps_value": 8 / 255, "seed": 0, "setting": "eps=8/255"}
ATTACK = {"name": "pgd", "norm": "linf", "eps": 8 / 255, "alpha": 1 / 255, "steps": 20}


def classification():
    return {"n_examples": 100, "clean_acc": 0.9, "robust_acc": 0.4, "robust_acc_by_attack": {"fgsm": 0.6, "pgd20": 0.4},
            "attacks": {"fgsm": ATTACK, "pgd20": ATTACK}, "cascade": True, "sanity": {"robust_acc_alone": 0.5},
            "metric_names": {"clean": "clean_acc", "robust": "robust_acc"},
            "robustness_curve": [  # the run's own eps (8/255) too: the main evaluation's numbers, never twice
                {"eps": "16/255", "eps_value": 16 / 255, "clean_acc": 0.9, "fgsm": 0.3, "pgd20": 0.1,
                 "robust_acc": 0.1},
                {"eps": "2/255", "eps_value": 2 / 255, "clean_acc": 0.9, "fgsm": 0.8, "pgd20": 0.7, "robust_acc": 0.7},
                {"eps": "8/255", "eps_value": 8 / 255, "clean_acc": 0.9, "fgsm": 0.6, "pgd20": 0.4,
                 "robust_acc": 0.4}]}


def detection():
    return {"n_examples": 8, "n_objects": 19, "clean_map50": 0.5, "clean_map": 0.3, "robust_map50": 0.1,
            "robust_map": 0.05, "robust_map50_by_attack": {"tog_vanishing": 0.2, "pgd10": 0.1},
            "robust_map_by_attack": {"tog_vanishing": 0.1, "pgd10": 0.05},
            "ap50_per_class": {"clean": {"0": 0.5}, "robust": {"0": 0.1}}, "images_still_found": 0.25,
            "rates": {"vanished": 0.5}, "attacks": {"tog_vanishing": ATTACK, "pgd10": ATTACK}, "cascade": False,
            "metric_names": {"clean": "clean_map50", "robust": "robust_map50"}}


def segmentation():
    return {"n_examples": 8, "clean_miou": 0.6, "clean_pixel_acc": 0.9, "robust_miou": 0.2, "robust_pixel_acc": 0.5,
            "robust_miou_by_attack": {"pgd20": 0.2}, "iou_per_class": {"clean": {"0": 0.9}},
            "images_still_correct": 0.125, "attacks": {"pgd20": ATTACK},
            "metric_names": {"clean": "clean_miou", "robust": "robust_miou"}}


def text():
    return {"n_examples": 20, "clean_acc": 0.45, "robust_acc": 0.05, "robust_acc_by_attack": {"fgm": 0.05},
            "clean_macro_f1": 0.12, "robust_macro_f1": None, "robust_macro_f1_by_attack": {"fgm": float("nan")},
            "attacks": {"fgm": ATTACK}, "metric_names": {"clean": "clean_acc", "robust": "robust_acc"}}


def table(rows):
    """(eval_attack, eval_eps, metric, headline, value) of each row, in order."""
    return [(r["eval_attack"], r["eval_eps"], r["metric"], r["headline"], r["value"]) for r in rows]


def test_classification_rows_cover_clean_worst_each_attack_and_the_curve():
    rows = tidy.rows(classification(), SETTINGS)
    assert table(rows) == [
        ("none", "0", "clean_acc", "clean", 0.9),
        ("worst", "8/255", "robust_acc", "robust", 0.4),
        ("fgsm", "8/255", "robust_acc", None, 0.6),
        ("pgd20", "8/255", "robust_acc", None, 0.4),
        ("worst", "2/255", "robust_acc", None, 0.7),  # the curve, by eps, without the run's own eps again
        ("fgsm", "2/255", "robust_acc", None, 0.8),
        ("pgd20", "2/255", "robust_acc", None, 0.7),
        ("worst", "16/255", "robust_acc", None, 0.1),
        ("fgsm", "16/255", "robust_acc", None, 0.3),
        ("pgd20", "16/255", "robust_acc", None, 0.1)]
    assert [r["eval_eps_value"] for r in rows[4:]] == [2 / 255] * 3 + [16 / 255] * 3
    assert all(r["n_examples"] == 100 and r["dataset"] == "digits" and r["seed"] == 0 for r in rows)
    assert list(rows[0]) == list(tidy.COLUMNS)
    assert tidy.headline(rows) == {"clean": 0.9, "robust": 0.4, "metric": "robust_acc"}


def test_detection_rows_carry_every_metric_of_each_attack():
    assert table(tidy.rows(detection(), SETTINGS | {"task": "detection"})) == [
        ("none", "0", "clean_map50", "clean", 0.5),
        ("none", "0", "clean_map", None, 0.3),
        ("worst", "8/255", "robust_map50", "robust", 0.1),
        ("tog_vanishing", "8/255", "robust_map50", None, 0.2),
        ("pgd10", "8/255", "robust_map50", None, 0.1),
        ("worst", "8/255", "robust_map", None, 0.05),
        ("tog_vanishing", "8/255", "robust_map", None, 0.1),
        ("pgd10", "8/255", "robust_map", None, 0.05)]


def test_segmentation_rows_include_pixel_accuracy():
    assert table(tidy.rows(segmentation(), SETTINGS | {"task": "segmentation"})) == [
        ("none", "0", "clean_miou", "clean", 0.6),
        ("none", "0", "clean_pixel_acc", None, 0.9),
        ("worst", "8/255", "robust_miou", "robust", 0.2),
        ("pgd20", "8/255", "robust_miou", None, 0.2),
        ("worst", "8/255", "robust_pixel_acc", None, 0.5)]


def test_text_rows_include_macro_f1_and_leave_undefined_numbers_empty():
    assert table(tidy.rows(text(), SETTINGS | {"task": "text"})) == [
        ("none", "0", "clean_acc", "clean", 0.45),
        ("none", "0", "clean_macro_f1", None, 0.12),
        ("worst", "8/255", "robust_acc", "robust", 0.05),
        ("fgm", "8/255", "robust_acc", None, 0.05),
        ("worst", "8/255", "robust_macro_f1", None, None),
        ("fgm", "8/255", "robust_macro_f1", None, None)]  # NaN: not a number a CSV reader should see


@pytest.mark.parametrize("results", [classification, detection, segmentation, text])
def test_pandas_reads_results_csv_with_usable_dtypes(results, tmp_path):
    rows = tidy.rows(results(), SETTINGS)
    tidy.write(tmp_path / "results.csv", rows)
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns) == list(tidy.COLUMNS) and len(df) == len(rows)
    numeric = {"eps_value", "eval_eps_value", "value", "seed", "n_examples"}
    assert all(pd.api.types.is_numeric_dtype(df[c]) for c in numeric)
    assert df["seed"].dtype.kind == "i" and df["n_examples"].dtype.kind == "i"
    assert all(pd.api.types.is_string_dtype(df[c]) for c in ("metric", "eval_attack", "eval_eps", "setting", "eps"))
    expected = [float("nan") if r["value"] is None else r["value"] for r in rows]
    assert df["value"].tolist() == pytest.approx(expected, nan_ok=True)
    assert df["value"].isna().sum() == sum(r["value"] is None for r in rows)  # missing: an empty cell, NaN
    assert set(df["headline"].dropna()) == {"clean", "robust"} and df["headline"].notna().sum() == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_settings_come_from_results_json_and_the_run_s_overrides(tmp_path):
    run = tmp_path / "eps=8_255" / "seed=1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["eps=8/255", "seed=1", "progress=false", "threads=2", "training=trades", "hydra.run.dir=x"]))
    results = classification() | {
        "job": "train", "task": "classification", "eps": {"given": "8/255", "value": 8 / 255}, "seed": 1,
        "versions": {"advbench": "9.9"}, "labels": {"dataset": "digits", "model": "Net", "training": "trades",
                                                    "attack": "pgd"},
        "evaluation": {"preset": "autoattack"}}
    assert tidy.settings(results, run) == {
        "run": "seed=1", "advbench_version": "9.9", "job": "train", "task": "classification", "dataset": "digits",
        "model": "Net", "training": "trades", "attack": "pgd", "eval": "autoattack", "eps": "8/255",
        "eps_value": 8 / 255, "seed": 1, "setting": "eps=8/255,training=trades"}


def test_a_real_run_writes_results_csv_beside_results_json(tmp_path):
    code, err = cli("dataset=digits", "model=mlp", "model.hidden=32", "epochs=1", "eval.n_examples=20",
                    "eval.eps_list=[0.05]", "progress=false", "threads=1", f"hydra.run.dir={tmp_path}/run",
                    cwd=tmp_path)
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["task"] == "classification"
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(df.columns) == list(tidy.COLUMNS)
    robust = df[df["headline"] == "robust"]
    assert len(robust) == 1 and robust["value"].item() == pytest.approx(results["robust_acc"], abs=1e-12)
    assert df.loc[df["headline"] == "clean", "value"].item() == pytest.approx(results["clean_acc"], abs=1e-12)
    by_attack = df[(df["eval_attack"] == "pgd20") & (df["eval_eps_value"] == results["eps"]["value"])]
    assert by_attack["value"].item() == pytest.approx(results["robust_acc_by_attack"]["pgd20"], abs=1e-12)
    curve = df[df["eval_eps_value"] == 0.05]
    assert sorted(curve["eval_attack"]) == ["pgd20", "worst"]
    assert curve.loc[curve["eval_attack"] == "worst", "value"].item() == pytest.approx(
        results["robustness_curve"][0]["robust_acc"], abs=1e-12)
    first = df.iloc[0]
    assert (first["run"], first["job"], first["task"], first["dataset"], first["model"], first["eval"],
            first["seed"], first["n_examples"]) == ("run", "train", "classification", "digits", "mlp", "pgd20", 0, 20)
    assert first["setting"] == "dataset=digits,epochs=1,eval.eps_list=[0.05],eval.n_examples=20,model.hidden=32," \
                               "model=mlp"
    assert first["advbench_version"] == results["versions"]["advbench"]
    assert "| alpha |" in (tmp_path / "run" / "summary.md").read_text()


def test_summary_gives_each_attack_s_step_size():
    from advbench.evaluation.summary import summary_markdown
    attacks = {"pgd20": {"name": "pgd", "norm": "linf", "eps": 0.1, "alpha": 0.0125, "steps": 20},
               "apgd-ce": {"name": "apgd", "norm": "linf", "eps": 0.1, "alpha": 0.2, "steps": 100},
               "square": {"name": "square", "norm": "linf", "eps": 0.1, "alpha": 0.1, "steps": 5000}}
    text = summary_markdown({"attacks": attacks, "robust_acc_by_attack": {"pgd20": 0.5, "apgd-ce": 0.4,
                                                                          "square": 0.4}})
    assert "| attack | robust acc after it | norm | eps | alpha | steps |" in text
    assert "| pgd20 | 50.00% | linf | 0.1 | 0.0125 (0.125 eps) | 20 |" in text
    assert "| apgd-ce | 40.00% | linf | 0.1 | adaptive (from 2 eps) | 100 |" in text
    assert "| square | 40.00% | linf | 0.1 | - | 5000 |" in text
