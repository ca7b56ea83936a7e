"""A stored config is data: a checkpoint whose config asks to build something else is refused, and runs nothing."""
import pytest
import torch

from helpers import DIGITS, cli, one_line_error


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    cli(*DIGITS, "epochs=3", "stop_after_epoch=2", f"hydra.run.dir={root}/run", cwd=root)
    cli(f"resume={root}/run", cwd=root, check=True)
    return root / "run"


def payloads(tmp_path):
    """The three classic gadgets, each aimed at a file of tmp_path."""
    victim, secret = tmp_path / "victim.txt", tmp_path / "secret.txt"
    victim.write_text("precious")
    secret.write_text("secret")
    return {
        "open": {"_target_": "builtins.open", "file": str(tmp_path / "created.txt"), "mode": "w"},
        "copyfile": {"_target_": "shutil.copyfile", "src": str(secret), "dst": str(tmp_path / "copied.txt")},
        "write_text": {"_target_": "pathlib.Path.write_text",
                       "self": {"_target_": "pathlib.Path", "_args_": [str(victim)]}, "data": ""},
    }


def untouched(tmp_path) -> bool:
    return ((tmp_path / "victim.txt").read_text() == "precious" and not (tmp_path / "created.txt").exists()
            and not (tmp_path / "copied.txt").exists())


@pytest.mark.parametrize("gadget", ["open", "copyfile", "write_text"])
@pytest.mark.parametrize("where", ["nested", "model"])
def test_a_checkpoint_whose_config_builds_a_gadget_is_refused(trained, tmp_path, gadget, where):
    state = torch.load(trained / "model.pt", weights_only=True)
    payload = payloads(tmp_path)[gadget]
    if where == "nested":
        state["config"]["model"]["hidden"] = payload
    else:
        state["config"]["model"] = payload
    torch.save(state, tmp_path / "evil.pt")
    for task in ("eval", "saliency"):
        code, err = cli(f"job={task}", f"checkpoint={tmp_path}/evil.pt", "eval.n_examples=10",
                        f"hydra.run.dir={tmp_path}/{task}", cwd=tmp_path)
        assert code == 2 and "refused" in one_line_error(err, f"checkpoint={tmp_path}/evil.pt")
        assert untouched(tmp_path)


def test_a_resume_whose_last_pt_builds_a_gadget_is_refused(trained, tmp_path):
    state = torch.load(trained / "last.pt", weights_only=True)
    state["config"]["optimizer"] = payloads(tmp_path)["write_text"]
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "status"):
        (run / name).write_bytes((trained / name).read_bytes())
    (run / "status").write_text("interrupted: SIGTERM\n")
    torch.save(state, run / "last.pt")
    code, err = cli(f"resume={run}", cwd=tmp_path)
    assert code == 2 and "optimizer._target_=pathlib.Path.write_text" in one_line_error(err, "refused")
    assert untouched(tmp_path)


def test_a_target_given_on_the_command_line_is_trusted(tmp_path):
    cli(*DIGITS, "epochs=1", "model=small_cnn", "model._target_=helpers.tiny_cnn", "~model.channels",
        "~model.hidden", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    code, err = cli("job=eval", f"checkpoint={tmp_path}/run", f"hydra.run.dir={tmp_path}/e1", cwd=tmp_path)
    assert code == 2 and "model._target_=helpers.tiny_cnn on the command line" in one_line_error(err, "refused")
    cli("job=eval", f"checkpoint={tmp_path}/run", "model._target_=helpers.tiny_cnn",
        f"hydra.run.dir={tmp_path}/e2", cwd=tmp_path, check=True)
    assert (tmp_path / "e2" / "results.json").exists()


@pytest.mark.parametrize("build", ["classifier", "detector"])
def test_torchvision_model_weights_are_data_and_every_failure_names_the_key(tmp_path, build):
    from advbench.errors import AdvbenchError
    from advbench.models.external import torchvision_classifier
    from advbench.models.torchvision_detectors import build as build_detector
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())
    torch.save({"fc.weight": Payload()}, tmp_path / "payload.pt")
    (tmp_path / "text.pt").write_text("hello\n")
    make = {"classifier": lambda w: torchvision_classifier((3, 16, 16), 10, [0.5] * 3, [0.25] * 3, weights=w),
            "detector": lambda w: build_detector("ssdlite320_mobilenet_v3_large", 10, 64, weights=w)}[build]
    for name, words in (("payload.pt", "refused by torch.load\\(weights_only=True\\)"),
                        ("text.pt", "not a readable torch file"), ("missing.pt", "no such file")):
        with pytest.raises(AdvbenchError, match=f"^model.weights={tmp_path / name}: {words}"):
            make(str(tmp_path / name))
    assert not marker.exists()
