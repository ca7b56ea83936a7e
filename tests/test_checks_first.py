"""Checks that come first: what the config alone can tell (an attack that does not fit the task, a model of another
task, tracker settings, a torchvision detector's name as a classifier) is refused in one line before the data is
loaded; a segmentation test split with no labelled pixel is refused before a model is built, and never scores 100%."""
import pytest
import torch
from omegaconf import OmegaConf

from advbench.attacks.spec import build_attack
from advbench.checks import check_config, model_tasks_of
from advbench.errors import AdvbenchError
from advbench.run_config import plain, typed_attack
from advbench.runtime.checkpoint import save_checkpoint
from advbench.runtime.rundir import shipped_targets
from advbench.tasks import model_tasks
from advbench.tasks.detection import Detection
from advbench.tasks.segmentation import Segmentation
from advbench.tasks.segmentation.metrics import IGNORE, Records
from conftest import CONF, compose_config, group_options
from helpers import cli, one_line_error
from test_config import EXTRA, PARTNERS, task_of_option

DETECTOR = ["dataset=digits_det", "model=yolo_tiny", "attack=pgd", "eval=detection"]
SEGMENTER = ["dataset=digits_seg", "model=unet_tiny", "attack=pgd", "eval=segmentation"]
OUTPUTS = ("metrics.jsonl", "model.pt", "results.json", "last.pt")


@pytest.fixture
def no_work(monkeypatch):
    """Loading data, building a model or training fails the test: the refusal must come before all of them."""
    import advbench.experiment as experiment

    def began(*args, **kwargs):
        raise AssertionError("work began before the refusal")
    for name in ("load_data", "build_model", "fit"):
        monkeypatch.setattr(experiment, name, began)


def refused(tmp_path, *overrides, expected: str) -> str:
    """Run the CLI in-process; it must exit 2 with one line holding ``expected`` and leave no run outputs."""
    code, err = cli(*overrides, "progress=false", "threads=1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    line = one_line_error(err, expected)
    assert code == 2, err
    assert not any((tmp_path / "run" / name).exists() for name in OUTPUTS)
    return line


def detector_checkpoint(tmp_path):
    """A detector's checkpoint as a training run writes it (its weights are never read: the refusal comes first)."""
    config = OmegaConf.to_container(plain(compose_config(DETECTOR)))
    save_checkpoint(tmp_path / "det.pt", torch.nn.Linear(1, 1), config, choices={"model": "yolo_tiny"})
    return tmp_path / "det.pt"


# --- 1. the attack fits the task, and the model the data ------------------------------------------------------
def test_a_segmentation_evaluation_of_a_detector_is_refused_before_training(tmp_path, no_work):
    refused(tmp_path, *DETECTOR, "eval=segmentation",
            expected="eval.attacks.segpgd: attack.loss=segpgd is not defined for detection")


def test_a_detection_evaluation_of_a_classifier_is_refused_before_training(tmp_path, no_work):
    refused(tmp_path, "dataset=digits", "model=mlp", "eval=detection",
            expected="eval.attacks.tog_vanishing: attack.terms: obj is not a loss term of classification")


def test_evaluating_a_detector_checkpoint_under_segmentation_attacks_is_refused(tmp_path, no_work):
    # Before: accepted, and reported as a result because no image was found clean, so none was attacked.
    refused(tmp_path, "job=eval", f"checkpoint={detector_checkpoint(tmp_path)}", "eval=segmentation",
            expected="attack.loss=segpgd is not defined for detection")


def test_a_detector_checkpoint_on_classification_data_is_refused_naming_the_data_it_needs(tmp_path, no_work):
    # Before: a torch.cat traceback deep in the evaluation.
    line = refused(tmp_path, "job=eval", f"checkpoint={detector_checkpoint(tmp_path)}", "dataset=digits",
                   "eval=pgd20", expected="model=yolo_tiny (the checkpoint's) does not take classification data "
                                          "(dataset=digits): it is a detection model")
    assert "needs dataset=digits_det, fashion_mnist_det, yolo, coco" in line


def test_an_attack_of_another_task_is_refused_by_its_option_name(tmp_path, no_work):
    line = refused(tmp_path, "dataset=digits", "model=mlp", "attack=tog_vanishing",
                   expected="attack=tog_vanishing is an attack of detection, not of classification")
    assert "classification takes attack=" in line and "pgd" in line and "tog_vanishing" not in line.split(":")[-1]
    # Only where the option cannot serve: a key overridden into nonsense is named by its key, as before.
    refused(tmp_path, "dataset=digits", "model=mlp", "attack=pgd", "attack.terms=obj",
            expected="attack.terms: obj is not a loss term of classification: expected ce")


def test_a_model_of_another_task_is_refused_for_training(tmp_path, no_work):
    line = refused(tmp_path, "dataset=digits", "model=unet_tiny",
                   expected="model=unet_tiny does not take classification data (dataset=digits)")
    assert "it is a segmentation model" in line and "classification takes model=mlp, small_cnn" in line


def test_saliency_of_a_task_without_maps_is_refused_before_any_work(tmp_path, no_work, monkeypatch):
    # The tasks that draw are the registry's (draws_saliency): here segmentation, made one that does not.
    monkeypatch.setattr(Segmentation, "draws_saliency", False)
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    refused(tmp_path, *SEGMENTER, "job=saliency", f"checkpoint={tmp_path / 'plain.pt'}",
            expected="job=saliency draws classification, detection, text classification models; dataset=digits_seg "
                     "poses segmentation, which has no saliency maps")


def test_saliency_without_an_evaluation_attack_is_refused():
    cfg = plain(compose_config(["job=saliency", "checkpoint=x.pt"]))
    cfg.eval.attacks = {}
    with pytest.raises(AdvbenchError, match="job=saliency maps the gradient of the first of eval.attacks"):
        check_config(cfg)


@pytest.mark.parametrize("settings, task, expected", [
    ({"name": "pgd", "loss": "segpgd"}, Detection(2), "attack.loss=segpgd is not defined for detection"),
    ({"name": "pgd", "loss": "cospgd"}, Detection(2), "attack.loss=cospgd is not defined for detection"),
    ({"name": "pgd", "targeted": True}, Detection(2), "attack.targeted=true moves towards a random wrong class"),
    ({"name": "apgd", "targeted": True}, Segmentation(2), "attack=apgd \\(APGD-T\\) ranks a classifier's"),
    ({"name": "apgd", "loss": "dlr"}, Segmentation(2), "attack.loss=dlr is not defined for segmentation"),
])
def test_an_attack_that_does_not_fit_its_task_fails_when_built(settings, task, expected):
    # The API path too: the attack's objective is asked for when it is built, not when it first runs.
    spec = OmegaConf.create(typed_attack(settings, "attack"))
    with pytest.raises(AdvbenchError, match=expected):
        build_attack(spec, "0.1", task)


def test_attacks_that_fit_their_task_still_build():
    for settings, task in [({"name": "pgd", "loss": "segpgd"}, Segmentation(2)),
                           ({"name": "pgd", "targeted": True}, Segmentation(2)),
                           ({"name": "pgd", "terms": "obj", "goal": "empty", "descend": True}, Detection(2))]:
        assert build_attack(OmegaConf.create(typed_attack(settings, "attack")), "0.1", task) is not None


@pytest.mark.parametrize("group, option", group_options())
def test_every_shipped_option_with_its_partners_passes_the_checks(group, option):
    # No false refusal: each option, composed with partners of its task, is accepted (job=eval: a training
    # mode's own choice of attacks is tested in test_config).
    kind = task_of_option(group, option)
    partners = [p for p in PARTNERS.get(kind, []) if p.split("=")[0] != group]
    check_config(plain(compose_config([*partners, f"{group}={option}", *EXTRA.get(option, []), "job=eval"])))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_shipped_experiment_passes_the_checks(experiment):
    check_config(plain(compose_config([f"+experiment={experiment}"])))


def test_every_shipped_model_option_has_a_known_task():
    assert set(model_tasks()) == set(shipped_targets("model")) - {"module"}  # a user's module: not known
    assert model_tasks_of(OmegaConf.create({"_target_": "advbench.models.YoloTiny"})) == ("detection",)
    assert model_tasks_of(OmegaConf.create({"_target_": "mypackage.Net"})) == ()


# --- 2. trackers and model names ------------------------------------------------------------------------------
@pytest.mark.parametrize("uri, expected", [
    ("{tmp}/a_file/store", "a_file is a file, so"),
    ("foo://bar", "logger.mlflow_uri=foo://bar: not a tracking URI MLflow knows"),
    ("http://", "logger.mlflow_uri=http://: names no host"),
    ("sqlite:///{tmp}/a_file/runs.db", "a_file is a file, so"),
    ("/proc/advbench_store", "/proc is not writable"),  # os.access says yes to root there: a real probe says no
])
def test_a_bad_mlflow_uri_is_refused_before_any_work(tmp_path, no_work, uri, expected):
    pytest.importorskip("mlflow")
    (tmp_path / "a_file").write_text("not a folder")
    refused(tmp_path, "dataset=digits", "model=mlp", "logger=mlflow", f"logger.mlflow_uri={uri.format(tmp=tmp_path)}",
            expected=expected)


def test_a_bad_wandb_mode_is_refused_before_any_work(tmp_path, no_work):
    refused(tmp_path, "dataset=digits", "model=mlp", "logger=wandb", "logger.wandb_mode=offlne",
            expected="logger.wandb_mode=offlne: expected offline, online, disabled, shared")


def test_a_torchvision_detector_name_as_a_classifier_is_refused_without_a_download(tmp_path, no_work, monkeypatch):
    import torch.hub
    import advbench.models.external as external

    def download(*args, **kwargs):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    line = refused(tmp_path, "dataset=digits", "model=torchvision", "model.name=fasterrcnn_resnet50_fpn",
                   expected="model.name=fasterrcnn_resnet50_fpn is a torchvision detection model, not a classifier")
    assert "use model=torchvision_detector" in line
    with pytest.raises(AdvbenchError, match="is a torchvision segmentation model"):  # the Python API too
        external.torchvision_classifier((3, 32, 32), 10, [0.5] * 3, [0.5] * 3, name="fcn_resnet50")


# --- 3. segmentation with nothing to score --------------------------------------------------------------------
def test_segmentation_with_no_labelled_pixel_reports_no_number_never_100_percent():
    n, masks = 3, torch.full((3, 8, 8), IGNORE)
    records = Records(["pgd"], n, 2)
    right = torch.zeros(n, 2, 8, 8)
    records.add_clean(range(n), right, masks)
    records.add_attack(range(n), right)
    records.close("pgd", range(n))
    flags = {"clean": torch.ones(n, dtype=torch.bool), "pgd": torch.ones(n, dtype=torch.bool)}
    summary = Segmentation(2).summarize(flags, records)
    for key in ("clean_miou", "clean_pixel_acc", "robust_miou", "robust_pixel_acc", "images_still_correct"):
        assert summary[key] is None, (key, summary[key])
    assert summary["robust_miou_by_attack"] == {"pgd": None}


def test_images_without_a_labelled_pixel_do_not_count_as_still_correct():
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[1] = IGNORE  # the second image has nothing to score
    records = Records(["pgd"], 2, 2)
    logits = torch.zeros(2, 2, 4, 4)
    logits[:, 1] = 1  # predicts class 1 everywhere: the first image is all wrong
    records.add_clean(range(2), logits, masks)
    records.add_attack(range(2), logits)
    records.close("pgd", range(2))
    task = Segmentation(2)
    flags = {"clean": task.correct(logits, masks), "pgd": task.correct(logits, masks)}
    assert flags["clean"].tolist() == [False, True]  # per image, "nothing wrong" still passes the cascade
    assert task.summarize(flags, records)["images_still_correct"] == 0.0  # but it is not counted as correct


def _seg_folder(root, test_label: int, val_label: int | None = None):
    """A seg_folder data set: labelled training masks; test masks (and, with ``val_label``, a val/ split's) of one
    value everywhere."""
    import numpy as np
    from PIL import Image
    splits = (("train", 8), ("test", 3)) + ((("val", 2),) if val_label is not None else ())
    for split, n in splits:
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((16, 16), np.uint8)
            mask[4:12, 4:12] = 1
            if split != "train":
                mask[:] = test_label if split == "test" else val_label
            Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{i}.png")


def test_a_test_split_with_no_labelled_pixel_is_refused_before_a_model_is_built(tmp_path, monkeypatch):
    import advbench.experiment as experiment

    def began(*args, **kwargs):
        raise AssertionError("a model was built or trained")
    monkeypatch.setattr(experiment, "build_model", began)
    monkeypatch.setattr(experiment, "fit", began)
    _seg_folder(tmp_path / "data", test_label=255)
    refused(tmp_path, "dataset=seg_folder", f"dataset.path={tmp_path / 'data'}", "dataset.image_size=16",
            "dataset.val_size=2", "dataset.categories=[bg,a]", "dataset.mean=[0.5,0.5,0.5]",
            "dataset.std=[0.25,0.25,0.25]", "model=unet_tiny", "eval=segmentation",
            expected="the 3 test masks evaluated (eval.n_examples=500) have no labelled pixel")


def test_a_validation_split_with_no_labelled_pixel_is_refused_before_a_model_is_built(tmp_path, monkeypatch):
    import advbench.experiment as experiment

    def began(*args, **kwargs):
        raise AssertionError("a model was built or trained")
    monkeypatch.setattr(experiment, "build_model", began)
    monkeypatch.setattr(experiment, "fit", began)
    _seg_folder(tmp_path / "data", test_label=1, val_label=255)
    refused(tmp_path, "dataset=seg_folder", f"dataset.path={tmp_path / 'data'}", "dataset.image_size=16",
            "dataset.categories=[bg,a]", "dataset.mean=[0.5,0.5,0.5]",
            "dataset.std=[0.25,0.25,0.25]", "model=unet_tiny", "eval=segmentation",
            expected="the 2 validation masks (the val/ split or dataset.val_size) have no labelled pixel")


def test_detection_test_or_validation_images_without_any_object_are_refused_at_bind():
    # A YOLO split whose label folder is missing reads as images without objects: mAP would score nothing (0.00%).
    from types import SimpleNamespace
    some = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": torch.tensor([1])}
    none = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}

    def data(test, val):
        return SimpleNamespace(test=(None, test), val=(None, val), n_classes=2, classes=["a", "b"])
    settings = OmegaConf.create({"det_score": 0.25, "det_recall": 0.5, "n_examples": 2})
    assert Detection.configured(settings).bind(data([none, some], [some])).classes == ["a", "b"]
    with pytest.raises(AdvbenchError, match=r"the 2 test images evaluated \(eval.n_examples=2\) hold no labelled"):
        Detection.configured(settings).bind(data([none, none, some], [some]))  # only the first 2 are evaluated
    with pytest.raises(AdvbenchError, match="the 1 validation images .* hold no labelled object"):
        Detection.configured(settings).bind(data([some], [none]))
