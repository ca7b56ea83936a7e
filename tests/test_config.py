"""Every option of every config group composes and builds; the schema rejects bad values."""
import re

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advbench.attacks.spec import Attack, build_attack
from advbench.errors import AdvbenchError
from advbench.options import serves
from advbench.run_config import plain
from advbench.tasks import task_class, task_of
from advbench.tasks.classification import Classification
from advbench.tasks.detection import Detection
from advbench.tasks.segmentation import Segmentation
from advbench.tasks.text import TextClassification
from advbench.training import MODES
from conftest import CONF, compose_config, group_options


def task_of_option(group, option):
    """The first task (registry order) an option serves, as advbench.options derives it: its partners are that
    task's."""
    return serves(group, option)[0]


# Options that need one more setting to build: a user's module names its class; a RobustBench model needs its
# checkpoint on disk, so here it must fail with the one-line error (test_models_external loads a real one).
EXTRA = {"module": ["model.module._target_=helpers.TinyNet"]}
PARTNERS = {"text": ["dataset=synthetic_text", "model=textcnn", "training=mixed", "attack=fgm"],
            "detection": ["dataset=digits_det", "model=yolo_tiny", "training=adversarial", "attack=pgd"],
            "segmentation": ["dataset=digits_seg", "model=unet_tiny", "training=adversarial", "attack=pgd",
                             "eval=segmentation"]}


@pytest.mark.parametrize("group, option", group_options())
def test_every_option_composes_and_builds(group, option):
    # An option is composed with partners of its kind: a text model for a text data set, a detector for a
    # detection attack, and so on.
    kind = task_of_option(group, option)
    if option == "ultralytics_yolo":
        pytest.importorskip("ultralytics")
    partners = [p for p in PARTNERS.get(kind, []) if p.split("=")[0] != group]
    cfg = plain(compose_config([*partners, f"{group}={option}", *EXTRA.get(option, [])]))
    assert OmegaConf.select(cfg, group) is not None
    if option == "hf":  # a Hugging Face model needs its directory (test_hf builds one offline)
        with pytest.raises(Exception, match="model=hf needs model.name_or_path"):
            instantiate(cfg.model, in_shape=(16,), n_classes=10, vocab_size=50)
        return
    if option == "robustbench":
        with pytest.raises(Exception, match="model.name=Standard: no weights at"):
            instantiate(cfg.model, in_shape=(3, 32, 32), n_classes=10, mean=[0.5] * 3, std=[0.5] * 3)
        return
    channels = len(cfg.dataset.mean)
    if kind == "text":
        model = instantiate(cfg.model, in_shape=(16,), n_classes=10, vocab_size=50)
        assert model(torch.randint(0, 50, (2, 16))).shape == (2, 10)
        task = TextClassification(10)
    elif kind == "detection":
        kwargs = {"name": "ssdlite320_mobilenet_v3_large"} if cfg.model.get("name") else {}
        model = instantiate(cfg.model, in_shape=(channels, 64, 64), n_classes=10, mean=list(cfg.dataset.mean),
                            std=list(cfg.dataset.std), **kwargs).eval()
        assert len(model(torch.rand(2, channels, 64, 64)).predictions()) == 2
        task = Detection(10)
    elif kind == "segmentation":
        model = instantiate(cfg.model, in_shape=(channels, 32, 32), n_classes=11, mean=list(cfg.dataset.mean),
                            std=list(cfg.dataset.std)).eval()
        assert model(torch.rand(2, channels, 32, 32)).shape == (2, 11, 32, 32)
        task = Segmentation(11)
    else:  # built on a shape of the dataset's channel count
        model = instantiate(cfg.model, in_shape=(channels, 32, 32), n_classes=10, mean=list(cfg.dataset.mean),
                            std=list(cfg.dataset.std))
        assert model(torch.rand(2, channels, 32, 32)).shape == (2, 10)
        task = Classification(10)
    instantiate(cfg.optimizer)(model.parameters())
    attack = build_attack(cfg.attack, cfg.eps, task)
    assert attack is None if cfg.attack.name == "none" else isinstance(attack, Attack)
    assert cfg.training.name in MODES
    assert all(isinstance(build_attack(spec, cfg.eps, task), Attack) for spec in cfg.eval.attacks.values())


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_builds(experiment):
    cfg = plain(compose_config([f"+experiment={experiment}"]))
    assert cfg.training.name in MODES
    (key,) = serves("experiment", experiment)  # the task of the data set it selects
    assert key == task_of(cfg.dataset)
    task = task_class(key).configured(cfg.eval)
    accepts = MODES[cfg.training.name].accepts
    assert accepts is None or build_attack(cfg.attack, cfg.eps, task).name in accepts
    assert all(isinstance(build_attack(spec, cfg.eps, task), Attack) for spec in cfg.eval.attacks.values())


def test_default_experiment_is_the_documented_one():
    cfg = plain(compose_config())
    assert (cfg.dataset.name, cfg.model._target_, cfg.training.name) == (
        "fashion_mnist", "advbench.models.small_cnn", "adversarial")
    attack = build_attack(cfg.attack, cfg.eps)
    assert (attack.name, attack.random_start, attack.eps, attack.alpha) == ("fgsm", True, 0.1, 0.125)
    pgd20 = build_attack(cfg.eval.attacks.pgd20, cfg.eps)
    assert (pgd20.name, pgd20.steps, pgd20.eps) == ("pgd", 20, 0.1)


def test_attack_reads_eps_from_the_top_level():
    cfg = plain(compose_config(["attack=pgd", "eps=8/255"]))
    assert build_attack(cfg.attack, cfg.eps).eps == pytest.approx(8 / 255)
    assert build_attack(cfg.eval.attacks.pgd20, cfg.eps).eps == pytest.approx(8 / 255)


@pytest.mark.parametrize("override", [
    "amp=fp8", "epochs=abc", "device=tpu", "foo=1", "dataset=nope", "attack=nope",
    "training=nope", "progress=maybe", "attack.steps=1.5", "schedule=linear", "attack.bn_mode=frozen",
])
def test_schema_rejects_bad_values(override):
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)):
        compose_config([override])


@pytest.mark.parametrize("override, key, registry", [
    ("attack.norm=l3", "attack.norm", "THREATS"), ("attack.name=bim", "attack.name", "KINDS"),
    ("val.attack.norm=l1", "val.attack.norm", "THREATS"), ("+eval.attacks.x={name: cw}", "eval.attacks.x.name", "KINDS"),
    ("training.name=awp", "training.name", "MODES"),
])
def test_names_are_checked_against_the_registries(override, key, registry):
    """Attack kinds, norms and training modes are accepted exactly as their registries list them: no enum to keep
    in step by hand."""
    from advbench.attacks.spec import KINDS
    from advbench.attacks.threats import THREATS
    from advbench.checks import check_config
    known = {"KINDS": ("none", *KINDS), "THREATS": tuple(THREATS), "MODES": tuple(MODES)}[registry]
    with pytest.raises(AdvbenchError, match=rf"^{re.escape(key)}=\S+: expected one of {', '.join(known)}$"):
        check_config(plain(compose_config([override])))
