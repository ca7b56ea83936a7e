"""compose_scenes: geometry, tight boxes, determinism."""
import pytest
import torch

from box_checks import iou, tight_box

from advbench.data.scenes import compose_scenes, digits_source


@pytest.fixture(scope="module")
def digits():
    """sklearn digits as 16x16 uint8 items."""
    return digits_source()


@pytest.fixture(scope="module")
def scenes(digits):
    """200 scenes of 1 to 4 digits."""
    return compose_scenes(*digits, n_scenes=200, size=64, objects=(1, 4), seed=3)


def test_digits_source(digits):
    x, y = digits
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 16, 16) and len(x) == len(y) == 1797
    assert int(x.max()) == 255 and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))


def test_shapes_and_boxes_inside(scenes):
    assert scenes["images"].shape == (200, 1, 64, 64) and scenes["images"].dtype == torch.uint8
    assert scenes["masks"].shape == (200, 64, 64) and scenes["masks"].dtype == torch.uint8
    assert len(scenes["targets"]) == len(scenes["sources"]) == 200
    for t in scenes["targets"]:
        b = t["boxes"]
        assert b.dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_counts_labels_and_overlap(scenes, digits):
    _, y = digits
    counts = [len(t["labels"]) for t in scenes["targets"]]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    for t, s in zip(scenes["targets"], scenes["sources"]):
        assert t["labels"].tolist() == y[s].tolist()
        b = t["boxes"].tolist()
        assert all(iou(b[i], b[j]) <= 0.2 for i in range(len(b)) for j in range(i))


def test_mask_labels_match_targets(scenes):
    for m, t in zip(scenes["masks"], scenes["targets"]):
        present = set(m.unique().tolist()) - {0}
        assert present <= {c + 1 for c in t["labels"].tolist()}


def test_one_object_box_is_tight_box_of_mask(digits):
    out = compose_scenes(*digits, n_scenes=20, objects=(1, 1), seed=5)
    for img, m, t in zip(out["images"], out["masks"], out["targets"]):
        assert len(t["boxes"]) == 1
        assert t["boxes"][0].tolist() == tight_box(m != 0)
        assert tight_box(img[0] > 32) == tight_box(m != 0)  # the mask is the foreground of the pasted item
        assert set(m.unique().tolist()) == {0, int(t["labels"][0]) + 1}


def test_boxes_tight_where_not_overwritten(scenes):
    checked = 0
    for m, t in zip(scenes["masks"], scenes["targets"]):
        boxes = t["boxes"].long().tolist()
        for i, ((x1, y1, x2, y2), c) in enumerate(zip(boxes, t["labels"].tolist())):
            if any(iou(boxes[i], b) > 0 for j, b in enumerate(boxes) if j != i):
                continue  # another item may cover part of this one
            own = torch.zeros_like(m, dtype=torch.bool)
            own[y1:y2, x1:x2] = m[y1:y2, x1:x2] == c + 1
            assert tight_box(own) == [x1, y1, x2, y2]
            checked += 1
    assert checked > 100


def test_deterministic(digits):
    a = compose_scenes(*digits, n_scenes=30, seed=11)
    b = compose_scenes(*digits, n_scenes=30, seed=11)
    c = compose_scenes(*digits, n_scenes=30, seed=12)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["masks"], b["masks"])
    assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(a["targets"], b["targets"]))
    assert not torch.equal(a["images"], c["images"])


def test_rgb_and_nonsquare_items():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 3, 12, 20), generator=g, dtype=torch.uint8)
    out = compose_scenes(x, torch.arange(10), n_scenes=5, size=32, seed=1)
    assert out["images"].shape == (5, 3, 32, 32)
    for t in out["targets"]:
        assert (t["boxes"][:, 2:] <= 32).all()


def test_bad_arguments(digits):
    x, y = digits
    with pytest.raises(ValueError):
        compose_scenes(x.float(), y, 1)
    with pytest.raises(ValueError):
        compose_scenes(x, y[:5], 1)
    with pytest.raises(ValueError):
        compose_scenes(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 1)
