"""Any model: torchvision and timm classifiers by name, a user's own nn.Module by _target_, RobustBench's zoo from
its local layout; each with the data set's normalization in front (RobustBench models normalize themselves)."""
import json

import pytest
import torch

from advbench.errors import AdvbenchError
from advbench.models.external import adapt_channels, module, timm_classifier, torchvision_classifier
from helpers import DIGITS, cli, one_line_error

DATA = [a for a in DIGITS if not a.startswith("model")]  # digits, and the run settings; the model is the test's


def test_torchvision_and_timm_classifiers_take_any_channels_and_classes():
    x = torch.rand(2, 1, 32, 32)
    for factory in (torchvision_classifier, timm_classifier):
        if factory is timm_classifier:
            pytest.importorskip("timm")
        model = factory((1, 32, 32), 7, [0.5], [0.25], name="resnet18").eval()
        assert model(x).shape == (2, 7)
        assert torch.equal(model[0].mean.flatten(), torch.tensor([0.5]))  # the data's normalization in front
    with pytest.raises(AdvbenchError, match="model.name=nonet is not a torchvision classifier"):
        torchvision_classifier((1, 32, 32), 7, [0.5], [0.25], name="nonet")


def test_adapting_channels_averages_the_first_filters():
    conv_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    weights = conv_net[0].weight.detach().clone()
    adapt_channels(conv_net, 1)
    assert conv_net[0].in_channels == 1
    assert torch.allclose(conv_net[0].weight[:, 0], weights.mean(1))


def test_a_users_own_module_by_target_through_the_cli(tmp_path):
    cli(*DATA, "epochs=1", "model=module", "model.module._target_=helpers.TinyNet", "+model.module.width=6",
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["labels"]["model"] == "TinyNet" and results["n_examples"] == 60
    built = module((1, 8, 8), 10, [0.3], [0.4], {"_target_": "helpers.TinyNet", "width": 6})
    assert isinstance(built[1].net[0], torch.nn.Conv2d) and built[1].net[0].out_channels == 6


def test_a_torchvision_model_trains_and_evaluates_through_the_cli(tmp_path):
    cli(*DATA, "epochs=1", "model=torchvision", "model.name=resnet18", f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path, check=True)
    assert (tmp_path / "run" / "results.json").exists()


def test_a_robustbench_model_loads_from_its_local_layout_only(tmp_path):
    from advbench.models.robustbench import _pkg_resources_stub
    _pkg_resources_stub()  # as advbench's adapter does before importing robustbench
    pytest.importorskip("robustbench")
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    torch.manual_seed(0)
    zoo = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]
    model = zoo["Wong2020Fast"]["model"]()
    target = tmp_path / "models" / "cifar10" / "Linf"
    target.mkdir(parents=True)
    synthetic = ["dataset=synthetic", "dataset.channels=3", "dataset.image_size=32", "dataset.n_classes=10",
                 "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]", "eval.n_examples=8",
                 "eval.attacks.pgd20.steps=2", "progress=false", "threads=2"]
    rb = ["job=eval", "model=robustbench", "model.name=Wong2020Fast", f"model.model_dir={tmp_path}/models"]
    code, err = cli(*rb, *synthetic, f"hydra.run.dir={tmp_path}/missing", cwd=tmp_path)
    assert code == 2 and "put RobustBench's checkpoint there" in one_line_error(err, "no weights at")
    torch.save({"state_dict": model.state_dict()}, target / "Wong2020Fast.pt")
    cli(*rb, *synthetic, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["n_examples"] == 8 and results["labels"]["model"] == "robustbench-Wong2020Fast"


def test_a_plain_state_dict_of_the_network_loads_behind_the_normalization():
    from advbench.runtime.checkpoint import load_weights
    torch.manual_seed(0)
    net = torchvision_classifier((1, 32, 32), 7, [0.5], [0.25], name="resnet18")[1]  # what a user saves
    model = torchvision_classifier((1, 32, 32), 7, [0.5], [0.25], name="resnet18")
    load_weights(model, net.state_dict(), "model=torchvision")
    assert torch.equal(model[1].conv1.weight, net.conv1.weight) and torch.equal(model[0].std.flatten(),
                                                                                 torch.tensor([0.25]))
    load_weights(model, model.state_dict(), "model=torchvision")  # the whole model's keys load as they are
    # a block's own state dict (keys "weight", "bias") never loads into one layer of a larger model
    with pytest.raises(AdvbenchError, match="nor do they fit the network inside it"):
        load_weights(model, model[1].fc.state_dict(), "model=torchvision")
    other = torchvision_classifier((1, 32, 32), 10, [0.5], [0.25], name="resnet18")[1].state_dict()
    with pytest.raises(AdvbenchError, match=r"fc.weight \(10, 512\) in the file, \(7, 512\) in the model "
                                            r"\(and 1 more\)"):
        load_weights(model, other, "model=torchvision")


def test_eval_of_a_plain_torchvision_state_dict_through_the_cli(tmp_path):
    synthetic = ["dataset=synthetic", "dataset.image_size=16", "dataset.n_classes=5", "eval.n_examples=4",
                 "eval.attacks.pgd20.steps=1", "progress=false", "threads=2"]
    torch.manual_seed(0)
    net = torchvision_classifier((1, 16, 16), 5, [0.5], [0.25], name="resnet18")[1]
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    code, err = cli("job=eval", f"checkpoint={tmp_path / 'weights.pt'}", "model=torchvision", "model.name=resnet18",
                    *synthetic, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert code == 0 and "a state dict of the network alone, loaded into module 1 of the model" in err, err
    assert json.loads((tmp_path / "run" / "results.json").read_text())["n_examples"] == 4
    code, err = cli("job=eval", f"checkpoint={tmp_path / 'weights.pt'}", "model=torchvision", "model.name=resnet18",
                    *synthetic, "dataset.n_classes=3", f"hydra.run.dir={tmp_path}/other", cwd=tmp_path)
    assert code != 0 and "(5, 512) in the file, (3, 512) in the model" in one_line_error(
        err, "checkpoint: its weights do not fit model=")


def test_a_torchvision_model_that_does_not_take_the_data_is_refused_in_one_line():
    with pytest.raises(AdvbenchError, match=r"model=torchvision model.name=vit_b_16 does not take the data's 1x8x8 "
                                            r"images \(Wrong image height.*\): set its size arguments, e.g. "
                                            r"\+model.image_size=8 \(a ViT's; its patch size must divide it\)"):
        torchvision_classifier((1, 8, 8), 3, [0.5], [0.25], name="vit_b_16")
    with pytest.raises(AdvbenchError, match="model.foo: torchvision's resnet18 does not take it"):
        torchvision_classifier((1, 8, 8), 3, [0.5], [0.25], foo=1)


TINY_VIT = {"depth": 1, "embed_dim": 16, "num_heads": 2}


def test_timm_model_arguments_pass_through_model_kwargs():
    pytest.importorskip("timm")
    vit = timm_classifier((1, 8, 8), 3, [0.5], [0.25], name="vit_tiny_patch16_224",
                          kwargs={"img_size": 8, "patch_size": 4, **TINY_VIT})
    assert vit(torch.rand(2, 1, 8, 8)).shape == (2, 3) and vit.training  # built in train mode, as before
    with pytest.raises(AdvbenchError, match=r"does not take the data's 1x8x8 images \(.*\): set its size "
                                            r"arguments, e.g. \+model.kwargs.img_size=8"):
        timm_classifier((1, 8, 8), 3, [0.5], [0.25], name="vit_tiny_patch16_224", kwargs=TINY_VIT)
    with pytest.raises(AdvbenchError, match="model.kwargs.checkpoint_path: advbench sets it"):
        timm_classifier((1, 8, 8), 3, [0.5], [0.25], kwargs={"checkpoint_path": "x.pt"})
    with pytest.raises(AdvbenchError, match="timm's resnet18 does not take them"):
        timm_classifier((1, 8, 8), 3, [0.5], [0.25], kwargs={"img_size": 8})


def test_a_timm_vit_with_kwargs_trains_and_its_checkpoint_evaluates(tmp_path):
    pytest.importorskip("timm")
    vit = ["model=timm", "model.name=vit_tiny_patch16_224", "+model.kwargs.img_size=8",
           "+model.kwargs.patch_size=4", *(f"+model.kwargs.{k}={v}" for k, v in TINY_VIT.items())]
    cli(*DATA, "epochs=1", "dataset.n_train=100", "dataset.val_size=20", "training=standard", *vit,
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    # the stored config holds model.kwargs (a named argument of the factory, a mapping as timm.yaml's): accepted
    cli("job=eval", f"checkpoint={tmp_path}/run", "eval.n_examples=8", "eval.attacks.pgd20.steps=1",
        "progress=false", f"hydra.run.dir={tmp_path}/eval", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["n_examples"] == 8
    code, err = cli(*DATA, "epochs=1", "model=timm", "model.name=vit_tiny_patch16_224",
                    f"hydra.run.dir={tmp_path}/bad", cwd=tmp_path)
    assert code != 0 and "+model.kwargs.img_size=8" in one_line_error(err, "does not take the data's 1x8x8 images")
