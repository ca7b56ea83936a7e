"""Numbers that say what they are: text records the attacks that ran (not the preset it skipped) and evaluates
under a multi-step embedding PGD by default; detection's robust_map50 and its thresholds are defined in
results.json and summary.md; segmentation reports mIoU with and without background, its averaging stated."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from advbench.errors import AdvbenchError
from advbench.evaluation.plan import EvalPlan
from advbench.evaluation.summary import summary_markdown
from advbench.evaluation.tidy import evaluated
from advbench.run_config import typed_attack
from advbench.tasks.classification.task import Classification
from advbench.tasks.detection import Detection
from advbench.tasks.segmentation import Segmentation
from advbench.tasks.segmentation.metrics import Records
from advbench.tasks.text.task import TextClassification
from helpers import cli


def attack(**spec):
    """An attack config with every schema key, as a run's would be."""
    return OmegaConf.create(typed_attack(OmegaConf.create(spec), "attack"))


PGD20 = {"pgd20": attack(name="pgd", steps=20, random_start=True)}


# --- text: what ran --------------------------------------------------------------------------------------------
def test_text_evaluates_under_its_attack_and_pgd10_on_the_embeddings_and_says_the_preset_was_skipped():
    plan = EvalPlan(TextClassification.configured(OmegaConf.create({"own_attack_steps": None})), PGD20,
                    attack(name="fgm", norm="l2"), "1.0")
    attacks = plan.attacks()
    assert list(attacks) == ["fgm_embedding", "pgd10_embedding"]
    pgd = attacks["pgd10_embedding"].settings()
    assert (pgd["name"], pgd["norm"], pgd["eps"], pgd["steps"], pgd["target"]) == ("pgd", "l2", 1.0, 10, "embedding")
    record = plan.record()
    assert record["ran"] == ["fgm_embedding", "pgd10_embedding"]
    assert record["preset_skipped"]["attacks"] == ["pgd20"] and "embedding" in record["preset_skipped"]["why"]


def test_own_attack_steps_zero_is_the_one_step_attack_alone_and_a_negative_count_is_refused():
    plan = EvalPlan(TextClassification.configured(OmegaConf.create({"own_attack_steps": 0})), PGD20,
                    attack(name="fgm", norm="l2"), "1.0")
    assert list(plan.attacks()) == ["fgm_embedding"]
    with pytest.raises(AdvbenchError, match="eval.own_attack_steps=-1"):
        TextClassification.configured(OmegaConf.create({"own_attack_steps": -1}))


def test_a_run_attack_with_as_many_steps_is_not_run_twice():
    plan = EvalPlan(TextClassification(), PGD20, attack(name="pgd", norm="l2", steps=10), "1.0")
    assert list(plan.attacks()) == ["pgd_embedding"]


def test_an_image_task_runs_its_preset_and_records_no_skip():
    plan = EvalPlan(Classification(10), PGD20, attack(name="fgm", norm="l2"), "0.1")
    assert plan.record() == {"ran": ["pgd20"]}


def test_summary_and_results_csv_name_what_ran_when_the_preset_was_skipped():
    evaluation = {"preset": "pgd20", "ran": ["fgm_embedding", "pgd10_embedding"],
                  "preset_skipped": {"attacks": ["pgd20"], "why": "embeddings"}}
    text = summary_markdown({"evaluation": evaluation, "attacks": {}})
    assert "`fgm_embedding`, `pgd10_embedding` (preset `pgd20` skipped: embeddings)" in text
    assert "evaluation `pgd20`" not in text
    assert evaluated(evaluation) == "fgm_embedding+pgd10_embedding"
    assert evaluated({"preset": "pgd20", "ran": ["pgd20"]}) == "pgd20"


def test_a_text_run_records_in_results_json_and_summary_md_what_ran(tmp_path):
    cli("dataset=synthetic_text", "model=textcnn", "training=mixed", "attack=fgm", "eps=1.0", "epochs=1",
        "progress=false", "threads=1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["evaluation"]["ran"] == ["fgm_embedding", "pgd10_embedding"]
    assert results["evaluation"]["preset_skipped"]["attacks"] == ["pgd20"]
    assert list(results["robust_acc_by_attack"]) == ["fgm_embedding", "pgd10_embedding"]
    assert results["attacks"]["pgd10_embedding"]["steps"] == 10
    # cumulative under the cascade: the multi-step attack can only lower what the one-step one left
    assert results["robust_acc_by_attack"]["pgd10_embedding"] <= results["robust_acc_by_attack"]["fgm_embedding"]
    assert "preset `pgd20` skipped" in (tmp_path / "run" / "summary.md").read_text()


# --- detection: robust_map50 defined -----------------------------------------------------------------------------
def test_detection_defines_robust_map50_and_states_its_thresholds():
    task = Detection.configured(OmegaConf.create({"det_score": 0.4, "det_recall": 0.6}))
    definitions = task.metric_definitions()
    assert (definitions["det_score"], definitions["det_recall"]) == (0.4, 0.6)
    assert "lowest" in definitions["robust_map50"] and "standard way" in definitions["robust_map50_by_attack"]
    text = summary_markdown({"metric_names": {"clean": "clean_map50", "robust": "robust_map50"},
                             "metric_definitions": definitions, "robust_map50": 0.2, "clean_map50": 0.5})
    assert "robust map50: 20.00%** (defined below)" in text
    assert "`eval.det_score` = 0.4, `eval.det_recall` = 0.6" in text and "- `robust_map50`: the lowest" in text


# --- segmentation: mIoU with and without background --------------------------------------------------------------
def _one_image(classes):
    """One 4x4 image: rows 0-1 background, row 2 class 1, row 3 class 2; predicted class 1 but row 3 (class 2)."""
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[0, 2], masks[0, 3] = 1, 2
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1] = 1
    logits[0, 2, 3] = 2
    records = Records(["pgd"], 1, 3)
    records.add_clean(range(1), logits, masks)
    records.add_attack(range(1), logits)
    records.close("pgd", range(1))
    task = Segmentation(3, classes)
    flags = {"clean": task.correct(logits, masks), "pgd": task.correct(logits, masks)}
    return task.summarize(flags, records), task


def test_segmentation_reports_miou_with_and_without_background():
    summary, task = _one_image(["background", "a", "b"])
    # IoU: background 0/8, a 4/12, b 4/4; one confusion matrix over the split, classes present averaged
    assert summary["clean_miou"] == pytest.approx((0 + 1 / 3 + 1) / 3)
    assert summary["clean_miou_no_background"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["robust_miou_no_background"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["robust_miou_no_background_by_attack"] == {"pgd": pytest.approx((1 / 3 + 1) / 2)}
    assert "clean_miou_no_background" in task.metric_definitions()
    text = summary_markdown({"metric_names": {"clean": "clean_miou", "robust": "robust_miou"}, **summary,
                             "metric_definitions": task.metric_definitions()})
    assert "clean miou no background: 66.67%" in text and "one confusion matrix summed over" in text


def test_segmentation_without_a_background_class_reports_no_such_number():
    summary, task = _one_image(["sky", "a", "b"])
    assert "clean_miou_no_background" not in summary and "robust_miou_no_background" not in summary
    assert "clean_miou_no_background" not in task.metric_definitions()
