"""Windowed queries (attacks/windowed.py): the logits of a window's change from the layers it reaches, as Square
(Linf) queries them, against whole forward passes."""
import pytest
import torch
from torch import nn

import advbench.attacks.square as square_module
from advbench.attacks.gradients import attack_mode
from advbench.attacks.square import square
from advbench.attacks.windowed import Windowed
from advbench.models.image import Normalize, small_cnn
from aa_fixtures import OpShapes


def _net(channels_last: bool) -> nn.Sequential:
    """Every kind of layer the head takes: padded, unpadded, strided and dilated convolutions, padded and
    overlapping max-pooling, eval-mode batch norm and dropout, then a tail that is not local."""
    torch.manual_seed(0)
    net = nn.Sequential(
        Normalize([0.4, 0.5], [0.3, 0.2]), nn.Conv2d(2, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(6, 8, 3), nn.Dropout(0.3), nn.GELU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=(2, 1), dilation=2), nn.Tanh(),
        nn.Flatten(), nn.LazyLinear(5))
    net(torch.rand(1, 2, 23, 19))
    with torch.no_grad():
        net[2].running_mean.uniform_(-0.5, 0.5)
        net[2].running_var.uniform_(0.5, 2.0)
    net.eval()
    return net.to(memory_format=torch.channels_last) if channels_last else net


@pytest.mark.parametrize("channels_last", [False, True])
def test_windowed_logits_equal_whole_passes_as_points_are_replaced(channels_last):
    net = _net(channels_last)
    windowed = Windowed.of(net)
    assert [type(layer) for layer in windowed.tail] == [nn.Flatten, nn.Linear]
    g = torch.Generator().manual_seed(1)
    current = torch.rand(12, 2, 23, 19, generator=g)
    with torch.no_grad():
        assert torch.equal(windowed.start(current), net(current))
        # Corners, edges, the middle, the whole image, one pixel; each time half the rows take their candidate,
        # so later queries read outputs kept from earlier ones.
        for top, left, h, w in [(0, 0, 3, 3), (20, 16, 3, 3), (9, 0, 5, 19), (0, 0, 23, 19), (11, 7, 1, 1),
                                (17, 3, 6, 2), (4, 12, 2, 7), (0, 18, 23, 1)]:
            rows = torch.randperm(12, generator=g)[:7]
            window = torch.rand(7, 2, h, w, generator=g)
            candidates = current[rows]
            candidates[:, :, top:top + h, left:left + w] = window
            assert torch.allclose(windowed.query(rows, top, left, window), net(candidates), rtol=1e-5, atol=1e-5)
            keep = torch.rand(7, generator=g) < 0.5
            windowed.accept(keep)
            current[rows[keep]] = candidates[keep]
        assert torch.allclose(windowed.start(current), net(current), rtol=1e-5, atol=1e-5)


def test_in_place_activations_leave_the_callers_window_and_the_kept_outputs_right():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Hardtanh(0.25, 0.75, inplace=True), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    windowed = Windowed.of(net)
    current = torch.rand(5, 1, 12, 12)
    with torch.no_grad():
        windowed.start(current.clone())
        window = torch.rand(5, 1, 4, 4)
        given = window.clone()
        candidates = current.clone()
        candidates[:, :, 3:7, 6:10] = window
        logits = windowed.query(torch.arange(5), 3, 6, window)
        assert torch.equal(window, given)  # the in-place Hardtanh clipped a copy
        assert torch.allclose(logits, net(candidates.clone()), rtol=1e-5, atol=1e-5)
        windowed.accept(torch.ones(5, dtype=torch.bool))
        assert torch.allclose(windowed.query(torch.arange(5), 0, 0, candidates[:, :, :2, :2]), net(candidates),
                              rtol=1e-5, atol=1e-5)


def test_a_windowed_query_convolves_only_what_the_window_reaches():
    net = small_cnn((1, 28, 28), 10, [0.5], [0.25]).eval()
    windowed = Windowed.of(net)
    with torch.no_grad():
        windowed.start(torch.rand(4, 1, 28, 28))
        with OpShapes(torch.ops.aten.convolution) as seen:
            windowed.query(torch.arange(4), 10, 12, torch.rand(4, 1, 2, 2))
    # Rows 10-11, columns 12-13: the first 5x5 convolution changes outputs 8-13 and 10-15 (reading 6-15 and
    # 8-17), the 2x2 pool 4-6 and 5-7, the second convolution 2-8 and 3-9, reading 0-10 and 1-11.
    assert [shape[2:] for shape in seen.seen[torch.ops.aten.convolution]] == [(10, 10), (11, 11)]


def test_windowed_applies_only_where_a_head_of_local_layers_leads_and_nothing_watches():
    net = small_cnn((1, 28, 28), 10, [0.5], [0.25]).eval()
    assert Windowed.of(net) is not None
    assert Windowed.of(nn.Sequential(nn.Flatten(), nn.Linear(784, 10))) is None  # nothing local to skip
    assert Windowed.of(nn.Sequential(nn.BatchNorm2d(1), *net)) is None  # a train-mode batch norm leads
    assert Windowed.of(nn.ModuleList([net])) is None and Windowed.of(torch.nn.Module()) is None
    handle = net[3].register_forward_hook(lambda *args: None)  # a hook would miss the skipped work
    assert Windowed.of(net) is None
    handle.remove()
    circular = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Flatten())
    assert Windowed.of(circular) is None


def _dyadic_cnn() -> nn.Sequential:
    """Weights in {-1, 0, 1}: on inputs in eighths every sum is exact in fp32, so a windowed and a whole pass
    agree bit for bit whatever order a kernel sums in, and so must Square's searches."""
    torch.manual_seed(1)
    net = small_cnn((1, 16, 16), 4, [0.5], [0.5], channels=(4, 6), hidden=8).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randint(-1, 2, p.shape).float())
    return net


def test_square_finds_the_same_points_with_windowed_queries_as_with_whole_passes(monkeypatch):
    net = _dyadic_cnn()
    x = torch.randint(0, 9, (24, 1, 16, 16), generator=torch.Generator().manual_seed(2)).float() / 8
    with torch.no_grad():
        y = net(x).argmax(1)
    run = lambda: square(net, x, y, "linf", 1 / 8, n_queries=200, generator=torch.Generator().manual_seed(3))  # noqa
    windowed = run()
    monkeypatch.setattr(square_module.Windowed, "of", classmethod(lambda cls, model: None))
    whole = run()
    assert torch.equal(windowed, whole)
    with torch.no_grad():
        broken = net(whole).argmax(1) != y
    assert 0 < broken.sum() < len(y)  # the search did something, and not everything


def test_square_on_a_windowed_model_leaves_it_as_it_was():
    net = _dyadic_cnn().train()
    net[0].register_buffer("seen", torch.zeros(1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(6, 1, 16, 16)
    square(net, x, torch.zeros(6, dtype=torch.long), "linf", 0.1, n_queries=20)
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    with attack_mode(net):
        assert Windowed.of(net) is not None  # eval mode inside the attack: the head is local


def _tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).eval()


def test_windowed_square_takes_as_many_examples_as_its_kept_layer_inputs_allow():
    net, x = _tiny_cnn(), torch.rand(1, 1, 8, 8)
    kept = 4 * (1 * 8 * 8 + 4 * 8 * 8 + 4 * 4 * 4)  # the conv's input, the pool's input, the tail's input (fp32)
    assert Windowed.of(net).kept_bytes(x) == kept
    assert square_module.square_rows(net, x, "linf", 16) == square_module.WINDOWED_BYTES // kept
    assert square_module.square_rows(net, x, "linf", 10**6) == 10**6  # never fewer than the evaluation's batch
    assert square_module.square_rows(net, x, "l2", 16) == 16  # L2 rescales the whole image: whole passes
    net[1].register_forward_hook(lambda *args: None)
    assert square_module.square_rows(net, x, "linf", 16) == 16


@pytest.mark.parametrize("norm, rows", [("linf", 40), ("l2", 16)])
def test_the_evaluation_hands_windowed_square_its_own_batches(monkeypatch, norm, rows):
    from advbench.attacks import spec
    from advbench.attacks.spec import make_attack
    from advbench.evaluation import Evaluator
    from advbench.tasks.classification import Classification

    net = _tiny_cnn()
    kept = Windowed.of(net).kept_bytes(torch.rand(1, 1, 8, 8))
    monkeypatch.setattr(square_module, "WINDOWED_BYTES", 40 * kept)
    sizes, run = [], spec.square

    def recorded(model, x, *args, **kwargs):
        sizes.append(len(x))
        return run(model, x, *args, **kwargs)
    monkeypatch.setattr(spec, "square", recorded)
    x = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)  # every example correct: all 100 are attacked
    attack = make_attack("square", norm, eps=0.01, steps=2)
    flags = Evaluator(Classification(3), "cpu", batch_size=16).flags(net, x, y, {"square": attack})
    assert sizes == [rows] * (100 // rows) + [100 % rows] and flags["clean"].all()
