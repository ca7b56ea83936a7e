"""model=ultralytics_yolo: an Ultralytics YOLOv8 built offline, its per-image box/cls/dfl terms, predictions by its
own NMS, attacks on it inside and outside inference mode, its weights files, and the CLI end to end."""
import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics resolves DNS names at import otherwise
pytest.importorskip("ultralytics")

from helpers import cli

from advbench.attacks import loss_and_grad, make_attack
from advbench.attacks.gradients import attack_mode
from advbench.data.scenes import compose_scenes, digits_source
from advbench.errors import AdvbenchError
from advbench.models.ultralytics_yolo import ultralytics_yolo
from advbench.tasks.detection import Detection

TASK = Detection(10)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def setup():
    """A random-weight yolov8n for 64x64 greyscale scenes of 1-3 digits (10 classes), and 6 such scenes."""
    torch.manual_seed(0)
    x, y = digits_source()
    made = compose_scenes(x[:300], y[:300], 6, size=64, objects=(1, 3), scale=(0.8, 2.0), seed=0)
    return ultralytics_yolo((1, 64, 64), 10).eval(), made["images"].float() / 255, made["targets"]


def test_terms_are_positive_per_image_and_ultralytics_own(setup):
    from ultralytics.utils.ops import xyxy2xywh
    model, x, y = setup
    with torch.no_grad():
        terms = model(x).loss(y)
        assert set(terms) == {"box", "cls", "dfl"}
        for v in terms.values():
            assert v.shape == (6,) and torch.isfinite(v).all() and (v > 0).all()
        for i in (0, 3):  # an image's terms in a batch are its terms alone
            alone = model(x[i:i + 1]).loss(y[i:i + 1])
            assert all(torch.allclose(terms[k][i], alone[k][0], atol=1e-4) for k in terms)
        # ... and ultralytics' own loss for a batch of that one image (its box, cls, dfl order)
        b = y[0]["boxes"]
        batch = {"batch_idx": torch.zeros(len(b)), "cls": y[0]["labels"].float()[:, None], "bboxes": xyxy2xywh(b) / 64}
        own = model.criterion(x.device)(model.model(x[:1]), batch)[0]
        assert torch.allclose(own, torch.stack([terms[k][0] for k in ("box", "cls", "dfl")]), atol=1e-5)
        empty = model(x[:1]).loss([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
        assert empty["box"].item() == empty["dfl"].item() == 0 and empty["cls"].item() > 0


def test_each_term_has_its_own_input_gradient(setup):
    model, x, y = setup
    grads = {}
    with attack_mode(model):
        for term in ("box", "cls", "dfl"):
            objective = TASK.objective(weights={term: 1.0})
            grads[term] = loss_and_grad(model, x, lambda out, f=objective: f(out, y))[2].flatten(1)
    for a, b in (("box", "cls"), ("box", "dfl"), ("cls", "dfl")):
        assert (grads[a].norm(dim=1) > 0).all() and (grads[b].norm(dim=1) > 0).all()
        assert (torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=1) < 0.99).all()
    with pytest.raises(AdvbenchError, match="no obj loss term"):
        TASK.objective(weights={"obj": 1.0})(model(x), y)


def test_predictions_are_ultralytics_nms_dicts_without_grad(setup):
    model, x, _ = setup
    found = model(x.clone().requires_grad_(True)).predictions()
    assert len(found) == 6
    for p in found:
        n = len(p["scores"])
        assert 0 < n <= 100 and p["boxes"].shape == (n, 4) and p["class_scores"].shape == (n, 10)
        assert p["labels"].dtype == torch.int64 and 0 <= p["labels"].min() and p["labels"].max() < 10
        assert (p["scores"] >= 0.001).all() and (p["scores"] <= 1).all() and not p["scores"].requires_grad
        assert (p["boxes"] >= 0).all() and (p["boxes"] <= 64).all()
        assert torch.allclose(p["class_scores"].gather(1, p["labels"][:, None])[:, 0], p["scores"])


def test_an_attack_stays_in_the_ball_and_leaves_modes_and_buffers_alone(setup):
    model, x, y = setup
    model = copy.deepcopy(model).train()  # a training model: the attack must not touch its BN statistics
    buffers = [b.clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    x_adv = make_attack("pgd", "linf", 0.03, steps=2, task=TASK, terms={"box": 1.0})(model, x, y)
    assert (x_adv - x).abs().max() <= 0.03 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any()
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_adversarial_validation_inside_an_inference_mode_loop(setup):
    """An EMA copy, eval mode, frozen parameters, everything under torch.inference_mode() (ultralytics' own val)."""
    model, x, y = setup
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    buffers = [b.clone() for b in ema.buffers()]
    modes = [m.training for m in ema.modules()]
    attack = make_attack("pgd", "linf", 8 / 255, steps=2, task=TASK, terms={"cls": 1.0, "dfl": 1.0})
    found = []
    with torch.inference_mode():
        for i in range(0, 6, 3):
            images, targets = x[i:i + 3].clone(), y[i:i + 3]
            found += ema.detect(images)  # inference-mode forwards between the attacks' backward passes
            x_adv = attack(ema, images, targets)
            found += TASK.predict(ema, x_adv).predictions()
            assert (x_adv - images).abs().max() <= 8 / 255 + 1e-6
    assert len(found) == 12
    assert all(torch.equal(a, b) for a, b in zip(buffers, ema.buffers()))
    assert [m.training for m in ema.modules()] == modes and not any(p.requires_grad for p in ema.parameters())


def test_weights_files_state_dicts_load_pickles_need_trust(setup, tmp_path):
    model, x, _ = setup
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save({"model": model.model}, tmp_path / "whole.pt")  # what an ultralytics .pt is
    with torch.no_grad():
        expected = model(x[:2]).raw[1]
        for weights, trust in (("state.pt", False), ("whole.pt", True)):
            loaded = ultralytics_yolo((1, 64, 64), 10, weights=str(tmp_path / weights), trust_pickle=trust).eval()
            assert torch.allclose(loaded(x[:2]).raw[1], expected, atol=1e-5)
    with pytest.raises(AdvbenchError, match="pickles the whole model.*trust_pickle=true"):
        ultralytics_yolo((1, 64, 64), 10, weights=str(tmp_path / "whole.pt"))
    with pytest.raises(AdvbenchError, match="detects 10 classes"):
        ultralytics_yolo((1, 64, 64), 5, weights=str(tmp_path / "whole.pt"), trust_pickle=True)


def test_bad_options_and_a_missing_package_are_one_line_errors(monkeypatch):
    with pytest.raises(AdvbenchError, match="divisible by 32"):
        ultralytics_yolo((3, 48, 48), 10)
    with pytest.raises(AdvbenchError, match="not a URL"):
        ultralytics_yolo((3, 64, 64), 10, cfg="https://example.com/yolov8n.yaml")
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import ultralytics now raises ImportError
    with pytest.raises(AdvbenchError, match=r"pip install 'advbench\[yolo\]'"):
        ultralytics_yolo((3, 64, 64), 10)


def test_import_and_build_stay_offline_and_write_only_the_settings_file(tmp_path):
    """In a fresh process without YOLO_OFFLINE: no socket is opened or resolved, no file written but ultralytics'
    settings file, and torch's print options are left as they were."""
    probe = textwrap.dedent("""
        import sys
        def hook(event, args):
            if event.startswith("socket.") or event in ("urllib.Request", "http.client.connect"):
                raise RuntimeError(f"network: {event} {args}")
            if event == "open" and args[1] and any(c in str(args[1]) for c in "wax+") \\
                    and not str(args[0]).endswith(".pyc"):
                print("wrote", args[0])
        sys.addaudithook(hook)
        import torch
        from advbench.models.ultralytics_yolo import ultralytics_yolo
        ultralytics_yolo((3, 64, 64), 10, cfg="yolo11n.yaml")
        print("linewidth", torch._tensor_str.PRINT_OPTS.linewidth)
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_OFFLINE", "YOLO_CONFIG_DIR", "XDG_CONFIG_HOME")}
    env |= {"HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    wrote = {line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("wrote ")}
    assert wrote == {str(tmp_path / ".config" / "Ultralytics" / "settings.json")}
    assert "linewidth 80" in done.stdout


def test_cli_trains_and_evaluates_an_ultralytics_yolo(tmp_path):
    cli("dataset=digits_det", "model=ultralytics_yolo", "dataset.n_scenes=64", "dataset.n_test=8", "dataset.val_size=8",
        "epochs=1", "batch_size=16", "training=standard", "eval.attacks.pgd20.steps=1", "val.attack.steps=1",
        "progress=false", "threads=1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["n_examples"] == 8 and 0 <= results["robust_map50"] <= results["clean_map50"] <= 1
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_box", "train_cls", "train_dfl"} <= set(row)
