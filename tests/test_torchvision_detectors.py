"""Tests of the torchvision detector adapter: modes, BN buffers, label shift, losses, gradients, weights."""
import copy
import inspect

import pytest
import torch
from torch import nn

from advbench.models.torchvision_detectors import ACCEPTED_NAMES, TorchvisionDetector, build

SIZE, N_CLASSES = 64, 3
# score_thresh=0 for the sigmoid-headed models: at random init (prior 0.01) they would otherwise detect nothing
MODELS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": {},
    "ssdlite320_mobilenet_v3_large": {},
    "retinanet_resnet50_fpn": {"score_thresh": 0.0},
    "fcos_resnet50_fpn": {"score_thresh": 0.0},
}
EXPECTED_TERMS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("box", "obj", "cls"),
    "ssdlite320_mobilenet_v3_large": ("box", "cls"),
    "retinanet_resnet50_fpn": ("box", "cls"),
    "fcos_resnet50_fpn": ("box", "obj", "cls"),
}
names = pytest.mark.parametrize("name", list(MODELS))


def _target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


TARGETS = [_target([[5, 6, 30, 40], [20, 20, 60, 50]], [0, 2]), _target([[10, 10, 40, 30]], [1])]
WITH_EMPTY = [TARGETS[0], _target([], [])]


def _images(n=2, seed=1):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _calibrate_bn(det):
    """Set BN running stats to one batch's statistics: at random init (mean 0, var 1) the deep
    MobileNets shrink activations so far that input gradients are ~1e-20, which says nothing."""
    bns = [m for m in det.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        det.losses(_images(seed=99), TARGETS, train_bn=True)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    det.eval()


_CACHE = {}


def _model(name):
    """A calibrated detector, built once per session; tests that mutate it take a deepcopy."""
    if name not in _CACHE:
        torch.manual_seed(0)
        det = build(name, N_CLASSES, SIZE, **MODELS[name])
        _calibrate_bn(det)
        _CACHE[name] = det
    return _CACHE[name]


def _flags(det):
    return [(n, m.training) for n, m in det.named_modules()]


def _buffers(det):
    return {n: b.clone() for n, b in det.named_buffers()}


@names
def test_forward_predictions_are_valid_and_differentiable(name):
    det = _model(name)
    x = _images().requires_grad_(True)
    preds = det.detect(x)
    assert len(preds) == 2
    for p in preds:
        k = p["boxes"].shape[0]
        assert k > 0 and p["boxes"].shape == (k, 4) and p["scores"].shape == (k,) and p["labels"].shape == (k,)
        assert p["labels"].dtype == torch.int64
        assert p["labels"].min() >= 0 and p["labels"].max() < N_CLASSES
        assert torch.isfinite(p["boxes"]).all() and ((p["scores"] >= 0) & (p["scores"] <= 1)).all()
    (g,) = torch.autograd.grad(sum(p["scores"].sum() for p in preds), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@names
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_training_flags_are_restored(name, mode):
    det = copy.deepcopy(_model(name))
    det.train(mode != "eval")
    if mode == "mixed":  # a frozen eval-mode backbone inside a training model, plus one odd BN
        det.model.backbone.eval()
        next(m for m in det.model.backbone.modules() if isinstance(m, nn.BatchNorm2d)).train()
    before = _flags(det)
    x = _images()
    det.detect(x)
    assert _flags(det) == before
    det.losses(x, TARGETS)
    assert _flags(det) == before
    det.losses(x, TARGETS, train_bn=True)
    assert _flags(det) == before
    with pytest.raises(Exception):  # torchvision rejects a degenerate box mid-forward
        det.losses(x, [_target([[10, 10, 5, 30]], [0]), TARGETS[1]])
    assert _flags(det) == before


@names
def test_only_the_loss_branching_modules_train_during_attack_losses(name):
    det = copy.deepcopy(_model(name))
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, _a: seen.__setitem__(m, m.training)) for m in det.modules()]
    det.losses(_images(), TARGETS)
    for h in hooks:
        h.remove()
    training = {m for m, flag in seen.items() if flag}
    assert training == set(det.loss_modules) & set(seen)
    assert det.model in training
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in training)


@names
def test_loss_modules_cover_every_training_branch(name):
    """Guard against torchvision changes: every module class reading self.training is accounted for."""
    det = _model(name)
    known = (nn.modules.batchnorm._BatchNorm, type(det.model.transform))
    readers = {cls for cls in {type(m) for m in det.model.modules()}
               if any("self.training" in inspect.getsource(c) for c in cls.__mro__
                      if c not in (nn.Module, object) and c.__module__.startswith(("torch", "torchvision")))}
    for m in det.model.modules():
        if type(m) in readers:
            assert m in det.loss_modules or isinstance(m, known), type(m)
    assert {type(m) for m in det.loss_modules} <= readers


@names
@pytest.mark.parametrize("batch", [1, 2])
def test_attack_losses_leave_bn_buffers_bit_identical(name, batch):
    det = _model(name)
    before = _buffers(det)
    x = _images(batch)
    losses = det.losses(x, TARGETS[:batch])
    assert set(losses) == set(det.loss_names)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    det.detect(x)
    after = _buffers(det)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@names
def test_term_gradients_are_nonzero_finite_and_distinct(name):
    det = _model(name)
    assert det.available_terms == EXPECTED_TERMS[name]
    x = _images().requires_grad_(True)
    terms = det.terms(x, TARGETS, generator=torch.Generator().manual_seed(0))
    assert tuple(terms) == EXPECTED_TERMS[name]
    grads = {t: torch.autograd.grad(v, x, retain_graph=True)[0] for t, v in terms.items()}
    for g in grads.values():
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    ts = list(grads)
    for i in range(len(ts)):
        for j in range(i + 1, len(ts)):
            assert not torch.allclose(grads[ts[i]], grads[ts[j]])


@names
def test_empty_image_is_supported(name):
    det = _model(name)
    x = _images().requires_grad_(True)
    terms = det.terms(x, WITH_EMPTY)
    (g,) = torch.autograd.grad(sum(terms.values()), x)
    assert all(torch.isfinite(v) for v in terms.values()) and torch.isfinite(g).all()
    per = det.terms(x.detach(), WITH_EMPTY, per_image=True)
    assert all(v.shape == (2,) and torch.isfinite(v).all() for v in per.values())


def test_greyscale_is_repeated_to_three_channels():
    det = _model("ssdlite320_mobilenet_v3_large")
    grey = _images()[:, :1].requires_grad_(True)
    a, b = det.detect(grey), det.detect(grey.detach().repeat(1, 3, 1, 1))
    assert all(torch.equal(p["boxes"], q["boxes"]) and torch.equal(p["scores"], q["scores"]) for p, q in zip(a, b))
    (g,) = torch.autograd.grad(det.terms(grey, TARGETS)["cls"], grey)
    assert g.shape == grey.shape and torch.isfinite(g).all() and g.abs().sum() > 0


@names
def test_training_step_changes_parameters(name):
    torch.manual_seed(0)
    det = copy.deepcopy(_model(name)).train()
    params = {n: p.detach().clone() for n, p in det.named_parameters()}
    bn = {n: b.clone() for n, b in det.named_buffers() if "running_mean" in n}
    opt = torch.optim.SGD(det.parameters(), lr=0.01)
    opt.zero_grad()
    sum(det.losses(_images(), TARGETS, train_bn=True).values()).backward()
    opt.step()
    changed = [n for n, p in det.named_parameters() if not torch.equal(p, params[n])]
    assert len(changed) > 0.5 * len(params)
    assert any("head" in n for n in changed) and any("backbone" in n for n in changed)
    # the training update does use batch statistics, unlike the attack's losses
    assert any(not torch.equal(b, bn[n]) for n, b in det.named_buffers() if n in bn)


# RetinaNet normalizes each image's loss by that image's foreground count, then averages over
# images: a plain mean. SSD and FCOS divide the batch's summed loss by the batch's total
# foreground count: a foreground-weighted mean of the per-image values. Faster R-CNN averages over
# the anchors/proposals it randomly samples across the batch: neither, and stochastic.
@names
def test_per_image_terms(name):
    det = _model(name)
    x = _images()
    per = det.terms(x, TARGETS, per_image=True, generator=torch.Generator().manual_seed(0))
    batched = det.terms(x, TARGETS, generator=torch.Generator().manual_seed(0))
    assert per.keys() == batched.keys()
    for t in per:
        assert per[t].shape == (2,) and torch.isfinite(per[t]).all()
        if name.startswith("retinanet"):
            torch.testing.assert_close(per[t].mean(), batched[t], rtol=1e-4, atol=1e-6)
        elif name.startswith(("ssd", "fcos")):  # every image has foreground: a convex combination
            assert per[t].min() - 1e-5 <= batched[t] <= per[t].max() + 1e-5
    if name.startswith(("ssd", "fcos")):  # equal foreground counts make the weighted mean plain
        twin, twins = x[:1].repeat(2, 1, 1, 1), [TARGETS[0], TARGETS[0]]
        per, batched = det.terms(twin, twins, per_image=True), det.terms(twin, twins)
        for t in per:
            torch.testing.assert_close(per[t].mean(), batched[t], rtol=1e-4, atol=1e-6)


def test_faster_rcnn_sampling_follows_the_generator_and_spares_the_global_rng():
    det = _model("fasterrcnn_mobilenet_v3_large_320_fpn")
    x = _images()
    state = torch.get_rng_state()
    a = det.losses(x, TARGETS, generator=torch.Generator().manual_seed(5))
    b = det.losses(x, TARGETS, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # without a generator the global RNG drives the sampling: seeded runs repeat
    torch.manual_seed(3)
    c = det.losses(x, TARGETS)
    torch.manual_seed(3)
    d = det.losses(x, TARGETS)
    assert all(torch.equal(c[k], d[k]) for k in c)


@pytest.mark.parametrize("name,offset", [(n, int(n.startswith(("fasterrcnn", "ssd")))) for n in MODELS])
def test_label_shift(name, offset):
    det = _model(name)
    assert det.label_offset == offset
    predictor = {"fasterrcnn_mobilenet_v3_large_320_fpn": lambda m: m.roi_heads.box_predictor.cls_score.out_features,
                 "ssdlite320_mobilenet_v3_large": lambda m: m.head.classification_head.num_columns,
                 "retinanet_resnet50_fpn": lambda m: m.head.classification_head.num_classes,
                 "fcos_resnet50_fpn": lambda m: m.head.classification_head.num_classes}[name]
    assert predictor(det.model) == N_CLASSES + offset
    targets = [{k: v.clone() for k, v in t.items()} for t in TARGETS]
    det.losses(_images(), targets)
    assert all(torch.equal(t["labels"], u["labels"]) for t, u in zip(targets, TARGETS))  # not mutated


def test_unknown_name_lists_accepted_names():
    with pytest.raises(ValueError, match="accepted names") as err:
        build("yolo", N_CLASSES, SIZE)
    assert all(n in str(err.value) for n in MODELS) and set(MODELS) <= set(ACCEPTED_NAMES)


@names
@pytest.mark.parametrize("wrapper_keys", [False, True])
def test_weights_file_round_trips(name, wrapper_keys, tmp_path):
    det = _model(name)
    path = tmp_path / "weights.pt"
    torch.save((det if wrapper_keys else det.model).state_dict(), path)
    torch.manual_seed(123)  # a different random init, which the file must overwrite
    loaded = build(name, N_CLASSES, SIZE, weights=path, **MODELS[name])
    assert isinstance(loaded, TorchvisionDetector)
    x = _images()
    with torch.no_grad():
        for p, q in zip(det.detect(x), loaded.detect(x)):
            assert all(torch.equal(p[k], q[k]) for k in ("boxes", "scores", "labels"))


def test_image_size_sets_the_resize():
    det = build("fasterrcnn_mobilenet_v3_large_320_fpn", N_CLASSES, (48, 64))
    assert det.model.transform.min_size == (48,) and det.model.transform.max_size == 64
    ssd = build("ssdlite320_mobilenet_v3_large", N_CLASSES, (48, 64))
    assert ssd.model.transform.fixed_size == (64, 48)  # torchvision's (W, H)
    assert build("retinanet_resnet50_fpn", N_CLASSES, SIZE, min_size=80).model.transform.min_size == (80,)
    x = torch.rand(1, 3, 48, 64)
    images, _ = ssd.model.transform(list(x))
    assert images.tensors.shape[-2:] == (48, 64)
