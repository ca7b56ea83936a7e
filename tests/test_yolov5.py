"""model=yolov5: the original YOLOv5 built offline, its per-image box/obj/cls terms against YOLOv5's own ComputeLoss,
its predictions against YOLOv5's own decode and NMS, its checkpoints loaded without running code from them,
YOLOv5's val.py loop with advbench's adversarial pass, and the CLI end to end."""
import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

if importlib.util.find_spec("yolov5") is None:  # an optional extra; `make test` installs it
    pytest.skip("the yolov5 package is not installed: pip install 'advbench[yolov5]'", allow_module_level=True)

from helpers import cli
from test_detection import write_user_data

import advbench
from advbench.attacks import loss_and_grad, make_attack
from advbench.attacks.gradients import attack_mode
from advbench.data.scenes import compose_scenes, digits_source
from advbench.errors import AdvbenchError
from advbench.models.yolov5 import YoloV5, yolov5
from advbench.tasks.detection import Detection
from advbench.tasks.detection.metrics import mean_ap

TASK = Detection(10)
TERMS = ("box", "obj", "cls")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def setup():
    """A random-weight yolov5n for 64x64 greyscale scenes of 1-3 digits (10 classes), and 6 such scenes. Its
    BatchNorm statistics are those of the scenes: with the initial ones (mean 0, variance 1) each layer shrinks
    its input and the outputs hardly depend on the image (input gradients ~1e-10)."""
    torch.manual_seed(0)
    x, y = digits_source()
    made = compose_scenes(x[:300], y[:300], 6, size=64, objects=(1, 3), scale=(0.8, 2.0), seed=0)
    model, images = yolov5((1, 64, 64), 10), made["images"].float() / 255
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass sets the statistics of that batch
    with torch.no_grad():
        model.train()(images)
    for m in norms:
        m.momentum = 0.03  # YOLOv5's
    return model.eval(), images, made["targets"]


def yolo_targets(targets, width, height) -> torch.Tensor:
    """A batch's targets as YOLOv5's loader gives them: (n, 6) rows of image, class, cx, cy, w, h normalized."""
    rows = []
    for i, t in enumerate(targets):
        b = t["boxes"]
        cxcywh = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1) / torch.tensor([width, height] * 2)
        rows.append(torch.cat([torch.full((len(b), 1), float(i)), t["labels"].float()[:, None], cxcywh], 1))
    return torch.cat(rows)


def test_terms_are_compute_loss_per_image_and_sum_to_its_total(setup):
    from yolov5.utils.loss import ComputeLoss
    model, x, y = setup
    for hyp in ({}, {"label_smoothing": 0.1, "cls_pw": 1.5, "obj_pw": 0.7, "fl_gamma": 1.5}):
        detector = YoloV5(copy.deepcopy(model.model))
        detector.hyp |= hyp
        detector.model.hyp = detector.hyp  # what ComputeLoss reads
        compute_loss = ComputeLoss(detector.model)
        # Where two boxes claim one prediction, ComputeLoss's objectness target is whichever it writes last
        # (unordered) unless sort_obj_iou orders them: then the highest IoU, advbench's choice.
        compute_loss.sort_obj_iou = True
        raw = detector.train()(x).raw  # YOLOv5's training forward gives the same maps
        assert all(torch.equal(a, b) for a, b in zip(raw, detector.model(x)))
        terms = detector.loss(raw, y)
        assert set(terms) == set(TERMS) and all(v.shape == (6,) and v.requires_grad for v in terms.values())
        for i in range(6):  # each image's terms: ComputeLoss's parts for a batch of that image alone
            _, parts = compute_loss([r[i:i + 1] for r in raw], yolo_targets(y[i:i + 1], 64, 64))
            assert torch.allclose(torch.stack([terms[k][i] for k in TERMS]), parts, rtol=1e-5, atol=1e-7)
        # A batch whose images hold the same boxes (so as many positives each): ComputeLoss's batch means are the
        # means of the per-image terms, and its total (the sum times the batch size) their sum.
        same = [y[0]] * 6
        terms = detector.loss(raw, same)
        total, parts = compute_loss(raw, yolo_targets(same, 64, 64))
        assert torch.allclose(torch.stack([terms[k].mean() for k in TERMS]), parts, rtol=1e-5, atol=1e-7)
        assert torch.allclose(sum(terms[k].sum() for k in TERMS), total[0], rtol=1e-5)
        # objectness is a mean over equal-sized maps: its batch mean matches for any boxes
        terms = detector.loss(raw, y)
        assert torch.allclose(terms["obj"].mean(), compute_loss(raw, yolo_targets(y, 64, 64))[1][1], rtol=1e-5)


def test_one_class_has_no_class_term_as_in_compute_loss(setup):
    from yolov5.utils.loss import ComputeLoss
    _, x, y = setup
    torch.manual_seed(1)
    one = yolov5((1, 64, 64), 1)
    y1 = [{"boxes": t["boxes"], "labels": torch.zeros_like(t["labels"])} for t in y]
    raw = one(x).raw
    terms = one.loss(raw, y1)
    assert (terms["cls"] == 0).all() and terms["cls"].requires_grad
    compute_loss = ComputeLoss(one.model)
    compute_loss.sort_obj_iou = True
    _, parts = compute_loss([r[:1] for r in raw], yolo_targets(y1[:1], 64, 64))
    assert torch.allclose(torch.stack([terms[k][0] for k in TERMS]), parts, rtol=1e-5, atol=1e-7)


def test_predictions_are_yolov5s_own_decode_and_nms(setup):
    from yolov5.utils.general import non_max_suppression
    model, x, _ = setup
    found = model(x.clone().requires_grad_(True)).predictions()
    with torch.no_grad():
        decoded, _ = model.model.eval()(x)  # YOLOv5's eval forward: decoded boxes, objectness, class scores
    theirs = non_max_suppression(decoded, 0.001, 0.6, multi_label=True, max_det=100)
    for p, q in zip(found, theirs):
        n = len(p["scores"])
        assert 0 < n <= 100 and n == len(q) and not p["scores"].requires_grad
        assert p["boxes"].shape == (n, 4) and p["class_scores"].shape == (n, 10) and p["labels"].dtype == torch.int64
        assert torch.allclose(p["class_scores"].gather(1, p["labels"][:, None])[:, 0], p["scores"])
        # the same detections (in any order among equal scores): YOLOv5 clips its boxes after NMS, as here
        mine = torch.cat([p["boxes"], p["scores"][:, None], p["labels"][:, None].float()], 1)
        yours = torch.cat([q[:, :4].clamp(0, 64), q[:, 4:6]], 1)
        close = ((mine[:, None] - yours[None]).abs() < 1e-4).all(2)
        assert close.any(0).all() and close.any(1).all()


def test_each_term_has_its_own_input_gradient_and_an_attack_leaves_the_model_alone(setup):
    model, x, y = setup
    grads = {}
    with attack_mode(model):
        for term in TERMS:
            objective = TASK.objective(weights={term: 1.0})
            grads[term] = loss_and_grad(model, x, lambda out, f=objective: f(out, y))[2].flatten(1)
    for a, b in (("box", "obj"), ("box", "cls"), ("obj", "cls")):
        assert (grads[a].norm(dim=1) > 0).all() and (grads[b].norm(dim=1) > 0).all()
        assert (torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=1) < 0.99).all()
    with pytest.raises(AdvbenchError, match="no dfl loss term"):
        TASK.objective(weights={"dfl": 1.0})(model(x), y)
    trained = copy.deepcopy(model).train()  # a training model: the attack must not touch its BN statistics
    buffers = [b.clone() for b in trained.buffers()]
    modes = [m.training for m in trained.modules()]
    x_adv = make_attack("pgd", "linf", 0.03, steps=2, task=TASK, terms={"obj": 1.0})(trained, x, y)
    assert (x_adv - x).abs().max() <= 0.03 + 1e-6 and (x_adv != x).any()
    assert all(torch.equal(a, b) for a, b in zip(buffers, trained.buffers()))
    assert [m.training for m in trained.modules()] == modes and all(p.grad is None for p in trained.parameters())


def yolov5_checkpoint(model, path):
    """A .pt as YOLOv5's train.py saves one: half-precision copies of the model and its EMA, the optimizer's state,
    numpy's best fitness, the options; the model's Detect grids cached by a validation under inference mode."""
    from yolov5.utils.torch_utils import ModelEMA, de_parallel
    model = copy.deepcopy(model)
    model.nc, model.names, model.class_weights = 10, [str(c) for c in range(10)], torch.ones(10)
    ema = ModelEMA(model)
    with torch.inference_mode():
        ema.ema(torch.rand(1, 1, 64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    torch.save({"epoch": 3, "best_fitness": np.array([0.25]), "model": copy.deepcopy(de_parallel(model)).half(),
                "ema": copy.deepcopy(ema.ema).half(), "updates": ema.updates, "optimizer": optimizer.state_dict(),
                "opt": {"weights": "yolov5n.pt", "imgsz": 64, "hyp": dict(model.hyp)}, "git": None,
                "date": "2024-01-01T00:00:00", "yolov5pip_version": "7.0.13"}, path)
    return ema.ema


def as_saved_by_the_repository(path, out):
    """The same checkpoint as YOLOv5's GitHub repository saves it: its classes named models.yolo.*, models.common.*"""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = data.replace(b"cyolov5.models.", b"cmodels.")  # the pickle's GLOBAL opcodes
            dst.writestr(item, data)


def test_yolov5_checkpoints_load_without_unpickling_code(setup, tmp_path):
    model, x, _ = setup
    ema = yolov5_checkpoint(model.model, tmp_path / "last.pt")
    as_saved_by_the_repository(tmp_path / "last.pt", tmp_path / "repo.pt")
    pickled = zipfile.ZipFile(tmp_path / "repo.pt").read("last/data.pkl")
    assert b"cmodels.yolo\nDetectionModel" in pickled and b"cyolov5.models" not in pickled
    torch.save(model.state_dict(), tmp_path / "state.pt")  # advbench's model.pt holds the wrapper's state dict
    with torch.no_grad():
        expected = YoloV5(ema.half().float())(x[:2]).raw[0]
        for weights in ("last.pt", "repo.pt"):
            loaded = yolov5((1, 64, 64), 10, weights=str(tmp_path / weights)).eval()
            assert torch.allclose(loaded(x[:2]).raw[0], expected, atol=1e-5)
            assert loaded.model.names == dict(enumerate(str(c) for c in range(10)))
            assert all(p.dtype == torch.float32 for p in loaded.parameters())
        loaded = yolov5((1, 64, 64), 10, weights=str(tmp_path / "state.pt")).eval()
        assert torch.allclose(loaded(x[:2]).raw[0], model(x[:2]).raw[0], atol=1e-6)
    with pytest.raises(AdvbenchError, match="detects 10 classes in 1-channel images; the data has 5 in 1"):
        yolov5((1, 64, 64), 5, weights=str(tmp_path / "last.pt"))
    with pytest.raises(AdvbenchError, match="no such file"):
        yolov5((1, 64, 64), 10, weights=str(tmp_path / "yolov5s.pt"))


class Planted(torch.nn.Module):
    """A module that leaves a file behind when it is unpickled: what a .pt carrying foreign code can do."""

    def __setstate__(self, state):
        super().__setstate__(state)
        open(self.marker, "w").close()


@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_carrying_another_class_is_refused_and_nothing_runs(setup, tmp_path, legacy):
    model, _, _ = setup
    marker = tmp_path / "ran"
    planted = copy.deepcopy(model.model)
    planted.model[0].act = Planted()
    planted.model[0].act.marker = str(marker)
    path = tmp_path / "yolov5s.pt"
    torch.save({"model": planted.half(), "epoch": -1}, path, _use_new_zipfile_serialization=not legacy)
    torch.load(path, weights_only=False)  # the file does run code when unpickled the way attempt_load does
    assert marker.exists()
    marker.unlink()
    with pytest.raises(AdvbenchError) as refused:
        yolov5((1, 64, 64), 10, weights=str(path))
    message = str(refused.value)
    assert message.startswith(f"model.weights={path}: refused") and "\n" not in message
    if not legacy:  # torch's legacy format stores the module's source code: refused whatever it holds
        assert "test_yolov5.Planted" in message
    assert not marker.exists()


class CallsDetectionModel:
    """Pickles as a call of yolov5's DetectionModel on a model YAML whose layer argument is Python code: its parser
    evaluates it. The class is allowed in a checkpoint; calling it must not be."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from yolov5.models.yolo import DetectionModel
        code = f"__import__('pathlib').Path({str(self.marker)!r}).touch() or 8"
        cfg = {"nc": 1, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30, 33, 23]],
               "backbone": [[-1, 1, "Conv", [code, 3, 2]]], "head": [[[0], 1, "Detect", ["nc", "anchors"]]]}
        return DetectionModel, (cfg, 3, 1)


def test_a_checkpoint_calling_an_allowed_class_is_refused_and_nothing_runs(setup, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "yolov5s.pt"
    torch.save({"model": CallsDetectionModel(marker), "epoch": -1}, path)
    with pytest.raises(AdvbenchError) as refused:
        yolov5((3, 64, 64), 1, weights=str(path))
    message = str(refused.value)
    assert message.startswith(f"model.weights={path}: refused, it calls yolov5.models.yolo.DetectionModel")
    assert "\n" not in message and not marker.exists()
    torch.load(path, weights_only=False)  # the file does run code when unpickled the way attempt_load does
    assert marker.exists()


def test_bad_options_and_a_missing_package_are_one_line_errors(monkeypatch, tmp_path):
    from yolov5.models import yolo
    with pytest.raises(AdvbenchError, match="divisible by 32"):
        yolov5((3, 48, 48), 10)
    with pytest.raises(AdvbenchError, match="not a URL"):
        yolov5((3, 64, 64), 10, cfg="https://example.com/yolov5n.yaml")
    with pytest.raises(AdvbenchError, match="no such model YAML"):
        yolov5((3, 64, 64), 10, cfg="yolov9n.yaml")
    with pytest.raises(AdvbenchError, match="Segment head is not supported"):
        yolov5((3, 64, 64), 10, cfg=str(os.path.join(os.path.dirname(yolo.__file__), "segment", "yolov5n-seg.yaml")))
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(AdvbenchError, match="not a readable torch file|refused"):
        yolov5((3, 64, 64), 10, weights=str(tmp_path / "notes.pt"))
    monkeypatch.setitem(sys.modules, "yolov5.models", None)  # import yolov5.models now raises ImportError
    with pytest.raises(AdvbenchError, match=r"pip install 'advbench\[yolov5\]'"):
        yolov5((3, 64, 64), 10)


def test_import_and_build_stay_offline_and_leave_the_process_settings_alone(tmp_path):
    """In a fresh process: no connection or name lookup, torch's print options and the thread variables as they
    were, yolov5's folder not left on sys.path, no pkg_resources warning or layer table on stderr."""
    probe = textwrap.dedent("""
        import os, sys
        def hook(event, args):
            if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request",
                         "http.client.connect"):
                raise RuntimeError(f"network: {event} {args}")
        sys.addaudithook(hook)
        import torch
        threads = os.environ.get("OMP_NUM_THREADS")
        from advbench.models.yolov5 import yolov5
        yolov5((3, 64, 64), 10, cfg="yolov5s.yaml")
        print("linewidth", torch._tensor_str.PRINT_OPTS.linewidth, "precision", torch._tensor_str.PRINT_OPTS.precision)
        print("threads", os.environ.get("OMP_NUM_THREADS") == threads)
        print("path", [p for p in sys.path if p.endswith("yolov5")])
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_OFFLINE", "YOLOv5_AUTOINSTALL")}
    env |= {"HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "linewidth 80 precision 4" in done.stdout and "threads True" in done.stdout and "path []" in done.stdout
    assert "pkg_resources" not in done.stderr and "Overriding" not in done.stderr, done.stderr


def rect_batches(x, y):
    """val.py's batches (rect=True): shapes that change from batch to batch, padded with YOLOv5's grey 114."""
    grey = 114 / 255
    yield x[:2], y[:2]
    yield torch.nn.functional.pad(x[2:4], (0, 32), value=grey), y[2:4]  # 64 x 96
    yield torch.nn.functional.pad(x[4:6], (0, 0, 0, 32), value=grey), y[4:6]  # 96 x 64


def test_yolov5_val_loop_with_advbench_adding_the_adversarial_pass(setup):
    """YOLOv5's val.py as it runs inside train.py: the EMA model (eval mode, frozen parameters) validated under
    torch.inference_mode(), its Detect head caching grids of inference tensors for each new batch shape; advbench
    attacks each loss term on the same batch and scores the mAP under each attack."""
    from yolov5.utils.general import non_max_suppression, xywh2xyxy
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.torch_utils import ModelEMA

    model, x, y = setup
    train_model = copy.deepcopy(model.model).train()  # train.py's model; ComputeLoss reads its hyp
    head = train_model.model[-1]
    head.grid, head.anchor_grid = [torch.empty(0)] * head.nl, [torch.empty(0)] * head.nl  # never run in eval yet
    ema = ModelEMA(train_model)
    compute_loss = ComputeLoss(train_model)
    val_model = ema.ema  # val.run(model=ema.ema, compute_loss=compute_loss)
    modes = [m.training for m in val_model.modules()]
    flags = [p.requires_grad for p in val_model.parameters()]
    stats = [b.clone() for b in val_model.buffers()]  # BatchNorm's running statistics, the anchors

    detector = YoloV5(val_model)  # advbench's view of the very same model: nothing copied
    attacks = {term: advbench.attack("pgd", eps="8/255", steps=2, task="detection", terms=term) for term in TERMS}
    truth, clean, ours, attacked = [], [], [], {term: [] for term in TERMS}
    raised = {term: [] for term in TERMS}
    loss = torch.zeros(3)
    with torch.inference_mode():  # val.run is decorated with @smart_inference_mode()
        for im, batch_targets in rect_batches(x, y):
            nb, _, height, width = im.shape
            targets = yolo_targets(batch_targets, width, height)
            # YOLOv5's own clean pass, loss and NMS, as val.py writes them
            preds, train_out = val_model(im)
            loss += compute_loss(train_out, targets)[1]
            targets[:, 2:] *= torch.tensor((width, height, width, height))  # to pixels
            clean += non_max_suppression(preds, 0.001, 0.6, multi_label=True, max_det=100)
            # advbench: the same batch's objects as xyxy pixel boxes, then one attack per loss term
            objects = [{"boxes": xywh2xyxy(targets[targets[:, 0] == i, 2:]),
                        "labels": targets[targets[:, 0] == i, 1].long()} for i in range(nb)]
            truth += objects
            ours += detector.detect(im)
            before = detector(im).loss(objects)
            for term, attack in attacks.items():
                adv = attack(detector, im, objects)
                assert adv.shape == im.shape and (adv - im).abs().max() <= 8 / 255 + 1e-6
                outputs = detector(adv)
                attacked[term] += outputs.predictions()
                raised[term].append(outputs.loss(objects)[term].sum() - before[term].sum())
            head = val_model.model[-1]  # its grids, rebuilt for this batch's shape by val_model(im)
            assert head.grid[0].is_inference() and head.grid[0].shape[2:4] == (height // 8, width // 8)
    assert torch.isfinite(loss).all() and (loss > 0).all()
    as_dicts = [{"boxes": q[:, :4].clamp(min=0), "scores": q[:, 4], "labels": q[:, 5].long()} for q in clean]
    found = {"clean": mean_ap(as_dicts, truth, [str(c) for c in range(10)])["map50"]}
    assert mean_ap(ours, truth, [str(c) for c in range(10)])["map50"] == pytest.approx(found["clean"], abs=1e-6)
    for term in TERMS:  # per-term mAP under attack; each attack raised the loss term it ascends
        found[term] = mean_ap(attacked[term], truth, [str(c) for c in range(10)])["map50"]
        assert sum(raised[term]) > 0, term
    assert all(0 <= v <= 1 for v in found.values()) and len(attacked["box"]) == len(truth) == 6
    assert [m.training for m in val_model.modules()] == modes
    assert [p.requires_grad for p in val_model.parameters()] == flags and not any(flags)
    assert all(torch.equal(a, b) for a, b in zip(stats, val_model.buffers()))
    assert all(p.grad is None for p in val_model.parameters())



def test_lightning_validation_step_with_an_adversarial_pass(setup, tmp_path):
    """The same in a Lightning validation_step, which trainer.validate runs in eval mode under inference_mode."""
    pl = pytest.importorskip("lightning.pytorch")  # the bridge extra; `make test` installs it
    model, x, y = setup

    class Validated(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.detector = YoloV5(copy.deepcopy(model.model))
            self.attack = advbench.attack("pgd", eps="8/255", steps=2, task="detection", terms="obj")
            self.truth, self.found = [], {"clean": [], "obj": []}

        def validation_step(self, batch, batch_idx):
            images, targets = batch
            assert torch.is_inference_mode_enabled() and not self.training
            before = self.detector(images)
            adv = self.attack(self.detector, images, targets)
            after = self.detector(adv)
            self.truth += targets
            self.found["clean"] += before.predictions()
            self.found["obj"] += after.predictions()
            self.log("val_obj_raised", (after.loss(targets)["obj"] - before.loss(targets)["obj"]).sum(),
                     batch_size=len(images), reduce_fx="sum")

    module = Validated().train()
    modes = [m.training for m in module.modules()]
    stats = [b.clone() for b in module.buffers()]
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=3,
                                         collate_fn=lambda b: (torch.stack([i for i, _ in b]), [t for _, t in b]))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    (logged,) = trainer.validate(module, loader, verbose=False)
    assert logged["val_obj_raised"] > 0 and len(module.found["obj"]) == len(module.truth) == 6
    names = [str(c) for c in range(10)]
    assert all(0 <= mean_ap(p, module.truth, names)["map50"] <= 1 for p in module.found.values())
    assert [m.training for m in module.modules()] == modes  # Lightning's eval mode undone, the attack's too
    assert all(torch.equal(a, b) for a, b in zip(stats, module.buffers()))
    assert all(p.requires_grad and p.grad is None for p in module.parameters())

YOLOV5 = ["model=yolov5", "epochs=1", "batch_size=8", "eps=0.05", "val.attack.steps=1", "progress=false",
          "threads=1"]
DETECTION = ["eval=detection", "eval.eps_list=null", "eval.attacks.pgd10.steps=1", "eval.attacks.tog_vanishing.steps=1"]


def test_cli_trains_with_mtd_and_evaluates_the_checkpoint(tmp_path):
    cli("dataset=digits_det", "dataset.n_scenes=24", "dataset.n_test=8", "dataset.val_size=8", *YOLOV5,
        "training=mtd", "attack=pgd", "attack.steps=1", *DETECTION, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path,
        check=True)
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["n_examples"] == 8 and set(results["robust_map50_by_attack"]) == {"pgd10", "tog_vanishing"}
    assert 0 <= results["robust_map50"] <= results["clean_map50"] <= 1
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_box", "train_obj", "train_cls", "val_clean_map50", "val_robust_map50"} <= set(row)

    cli("job=eval", f"checkpoint={run}", *DETECTION, "threads=1",
        "+eval.attacks.tog_mislabeling={name: pgd, steps: 1, goal: predictions, relabel: ml, descend: true}",
        f"hydra.run.dir={tmp_path}/eval", cwd=tmp_path, check=True)
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert again["clean_map50"] == results["clean_map50"]  # the trained YOLOv5, rebuilt from its checkpoint
    assert set(again["robust_map50_by_attack"]) == {"pgd10", "tog_vanishing", "tog_mislabeling"}


def test_cli_trains_on_a_yolo_folder_against_tog_vanishing_and_attacks_each_term(tmp_path):
    data_yaml, _ = write_user_data(tmp_path / "data")
    for i in (22, 23):  # test images without objects: found whatever the model predicts, so attacked
        (tmp_path / "data" / "labels" / "test" / f"{i}.txt").write_text("")
    cli("dataset=yolo", f"dataset.path={data_yaml}", "dataset.image_size=64", "dataset.mean=[0.1]",
        "dataset.std=[0.25]", *YOLOV5, "training=adversarial", "attack=tog_vanishing", "attack.steps=1", *DETECTION,
        *(f"+eval.attacks.pgd_{t}={{name: pgd, steps: 1, terms: {t}}}" for t in TERMS),
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    attacks = {"pgd10", "tog_vanishing", "pgd_box", "pgd_obj", "pgd_cls"}
    assert results["n_examples"] == 4 and results["classes"] == [f"digit{c}" for c in range(10)]
    assert set(results["robust_map50_by_attack"]) == attacks and results["n_objects"] > 0
    assert {name: results["attacks"][name]["terms"] for name in ("pgd_box", "pgd_obj", "pgd_cls")} == {
        "pgd_box": {"box": 1.0}, "pgd_obj": {"obj": 1.0}, "pgd_cls": {"cls": 1.0}}
    assert 0 <= results["robust_map50"] <= min([results["clean_map50"], *results["robust_map50_by_attack"].values()])
    assert {"images_still_found", "rates", "ap50_per_class"} <= set(results)
    flags = np.load(run / "robust_flags.npz")  # per image: found clean, after each attack, in the worst case
    assert set(flags.files) == attacks | {"clean", "worst_case"} and all(len(flags[k]) == 4 for k in flags.files)
    log = (run / "advbench.log").read_text()
    for name in attacks:  # the images without objects at least were attacked
        assert int(log.split(f"{name}: ")[1].split(" examples attacked")[0]) >= 2, name
    config = (run / ".hydra" / "config.yaml").read_text()
    assert "advbench.models.yolov5.yolov5" in config and "goal: empty" in config


@pytest.mark.parametrize("term", TERMS)
def test_cli_trains_against_an_attack_on_one_term(tmp_path, term):
    cli("dataset=digits_det", "dataset.n_scenes=16", "dataset.n_test=4", "dataset.val_size=4", *YOLOV5,
        "training=adversarial", "attack=pgd", "attack.steps=1", f"attack.terms={term}", "eval.attacks.pgd20.steps=1",
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert f"terms: {term}" in config
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(np.isfinite(row[f"train_{t}"]) for t in TERMS)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["n_examples"] == 4
