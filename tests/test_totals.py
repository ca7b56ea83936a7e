"""The training loop's per-step bookkeeping: exact sums in step order, no kernel per step, the first bad step."""
import torch
from torch.profiler import profile

from advbench.training.totals import FiniteWatch, Totals


def sequential(values, weights):
    """What the loop summed before: a float64 tensor per step, added on in step order."""
    total = 0
    for v, w in zip(values, weights):
        total = total + v.double() * w
    return float(total)


def test_sums_equal_the_step_by_step_float64_sums_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    losses = [torch.rand((), generator=g) * 10 ** torch.randint(-3, 4, (), generator=g) for _ in range(300)]
    sizes = torch.randint(1, 129, (300,), generator=g).tolist()
    counts = [torch.randint(0, 129, (), generator=g) for _ in range(300)]
    totals = Totals("cpu")
    for loss, size, count in zip(losses, sizes, counts):
        totals.add("loss", loss, size)
        totals.add("clean", count)
    read = totals.read()
    assert read["loss"] == sequential(losses, sizes)  # exact: same products, same order
    assert read["clean"] == sum(int(c) for c in counts)


def test_a_read_midway_does_not_change_the_final_sums():
    g = torch.Generator().manual_seed(1)
    losses = [torch.randn((), generator=g) for _ in range(50)]
    midway, once = Totals("cpu"), Totals("cpu")
    for i, loss in enumerate(losses):
        midway.add("loss", loss, 3)
        once.add("loss", loss, 3)
        if i % 7 == 0:
            partial = midway.read()["loss"]
            assert partial == sequential(losses[:i + 1], [3] * (i + 1))
    assert midway.read() == once.read() == {"loss": sequential(losses, [3] * 50)}
    assert len(midway.steps["loss"]) == 1  # a read folds what it summed: nothing grows across an epoch


def test_recording_a_step_launches_no_kernel():
    loss = torch.tensor(0.5, requires_grad=True) * 2
    count = torch.tensor(7)
    totals, watch = Totals("cpu"), FiniteWatch()
    with profile() as prof:
        totals.add("loss", loss, 64)
        totals.add("clean", count)
        watch.add(0, loss)
    ops = {e.name for e in prof.events()}
    assert ops <= {"aten::detach", "detach", "aten::alias"}, ops


def test_first_bad_is_the_first_recorded_step_with_a_non_finite_loss():
    watch = FiniteWatch()
    for step in range(5):
        watch.add(step, torch.tensor(1.0))
    assert watch.first_bad() is None
    watch.add(5, torch.tensor(2.0))
    watch.add(6, torch.tensor(float("nan")))
    watch.add(7, torch.tensor(float("inf")))
    assert watch.first_bad() == 6
    assert watch.first_bad() is None  # checked losses are not checked again


def test_a_per_element_loss_with_one_bad_element_is_caught():
    watch = FiniteWatch()
    watch.add(0, torch.ones(4))
    watch.add(1, torch.tensor([1.0, -float("inf"), 2.0]))
    assert watch.first_bad() == 1
    watch.add(2, torch.tensor([1e30, -1e30]))  # large but finite
    assert watch.first_bad() is None
