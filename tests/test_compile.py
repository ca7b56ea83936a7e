"""``compile``: the default per device, and the compiled path (forced on, on the CPU) giving eager's results with
batches padded to a few fixed sizes (advbench/runtime/compiled.py)."""
import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from advbench.attacks import Attack
from advbench.config import TrainingConf
from advbench.data.loaders import TensorLoader
from advbench.errors import AdvbenchError
from advbench.evaluation import Evaluator
from advbench.models import mlp
from advbench.runtime.compiled import Bucketed, resolve_compile
from advbench.tasks.classification import Classification
from advbench.training import MODES, Plan, train_epoch
from advbench.training.schedules import make_scheduler
from helpers import TINY, cli, one_line_error

SCALE, LOW, HIGH = 20.0, 0.3, 0.5  # logits: class 2 below LOW, class 1 between, class 0 above HIGH (of ``level``)
SHIFT = 484 / 576  # how far ``level`` moves when every pixel moves by 1 (border windows see fewer pixels)


def designed_net() -> nn.Module:
    """A 2-layer conv net on 1x8x8 inputs whose logits are SCALE * (level - HIGH), 0, SCALE * (LOW - level), with
    ``level`` a weighted mean of the pixels: every pixel's gradient is far from zero and an Linf attack of eps
    moves ``level`` by SHIFT * eps, so which examples it breaks is set by margins, not by rounding."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3))
    with torch.no_grad():
        conv, head = net[0], net[4]
        conv.weight[0], conv.weight[1] = 1 / 9, -1 / 9
        conv.bias.copy_(torch.tensor([0.0, 1.0]))  # channel 1 is 1 - channel 0: both stay positive (ReLU linear)
        head.weight.zero_()
        head.weight[0, :64], head.weight[2, 64:] = SCALE / 64, SCALE / 64
        head.bias.copy_(torch.tensor([-SCALE * HIGH, 0.0, SCALE * (LOW - 1)]))
    return net.eval()


def level(net, x) -> torch.Tensor:
    """The weighted mean of the pixels the designed net's logits depend on."""
    with torch.no_grad():
        return net[:3](x)[:, 0].mean((1, 2)) * (1 + net[1].eps) ** 0.5


def examples():
    """Images at levels 0.015 and 0.035 inside a class boundary (broken by attacks of eps 0.03 and 0.06, which
    move the level 0.025 and 0.05) and 0.1 inside (robust), with a faint pattern; two labelled wrong."""
    levels = torch.tensor([0.20, 0.285, 0.265, 0.315, 0.335, 0.37, 0.465, 0.485, 0.535, 0.515, 0.62, 0.60])
    pattern = 0.01 * (torch.arange(64).view(8, 8) % 2 * 2 - 1)
    x = (levels / SHIFT).view(-1, 1, 1, 1) + pattern
    y = torch.where(levels < LOW, 2, torch.where(levels < HIGH, 1, 0))
    y[[5, 10]] = (y[[5, 10]] + 1) % 3  # wrong already: never attacked
    return x, y


def test_compile_auto_is_on_with_cuda_and_off_on_the_cpu():
    assert resolve_compile("auto", "cpu") is False and resolve_compile(None, torch.device("cpu")) is False
    assert resolve_compile("auto", "cuda") is True and resolve_compile(None, torch.device("cuda", 0)) is True
    assert resolve_compile("auto", "cuda", pads_batches=False) is False  # text, detection: left eager
    assert resolve_compile(True, "cpu") is True and resolve_compile(False, "cuda") is False
    with pytest.raises(AdvbenchError, match="compile='yes'"):
        resolve_compile("yes", "cpu")


@pytest.mark.parametrize("value", ["yes", "1", "[true]"])
def test_a_bad_compile_value_is_one_line_naming_the_key(tmp_path, value):
    code, err = cli(*TINY, f"compile={value}", cwd=tmp_path)
    assert code == 2
    assert "auto" in one_line_error(err, "compile=")


def counting_backend(graphs: list):
    def backend(gm, inputs):
        graphs.append(next(tuple(t.shape) for t in inputs if torch.is_tensor(t) and t.shape[1:] == (1, 8, 8)))
        return gm.forward
    return backend


def test_a_shrinking_batch_compiles_one_graph_per_bucket():
    graphs, net = [], designed_net()
    runner = Bucketed(net, [8], backend=counting_backend(graphs))
    assert runner.sizes == (1, 2, 4, 8)
    x = examples()[0][:8]
    with torch.no_grad():
        for n in range(8, 0, -1):  # the cascade's and the attacks' alive sets
            out = runner(x[:n])
            assert out.shape == (n, 3) and torch.allclose(out, net(x[:n]), atol=1e-5)
    assert sorted(graphs) == [(b, 1, 8, 8) for b in (1, 2, 4, 8)]
    runner.train()  # batch norm in train mode: an off-bucket batch runs eagerly, exactly
    with torch.no_grad():
        out = runner(x[:5])
        assert torch.equal(out, copy.deepcopy(net).train()(x[:5]))
    assert len(graphs) == 4
    assert set(runner.state_dict()) == {f"inner.{k}" for k in net.state_dict()}
    assert [p.data_ptr() for p in runner.parameters()] == [p.data_ptr() for p in net.parameters()]


def test_padded_rows_leak_no_gradient_into_real_rows():
    net = designed_net()
    runner = Bucketed(net, [8], backend="aot_eager")
    x = examples()[0][:5].requires_grad_(True)
    assert runner.bucket(5) == 8
    wanted = torch.tensor([0, 1, 2, 0, 1])
    grad, = torch.autograd.grad(nn.functional.cross_entropy(runner(x), wanted, reduction="sum"), x)
    plain, = torch.autograd.grad(nn.functional.cross_entropy(net(x), wanted, reduction="sum"), x)
    assert grad.shape == x.shape and torch.allclose(grad, plain, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # inductor compiles each graph with the C++ compiler: seconds each
def test_compiled_evaluation_flags_are_eager_ones():
    pytest.importorskip("torch._inductor")
    x, y = examples()
    net, task = designed_net(), Classification(3)
    attacks = {"fgsm": Attack("fgsm", "linf", 0.03, 0.03), "pgd": Attack("pgd", "linf", 0.06, 0.02, steps=5)}
    moved = level(net, x) - torch.where(y == 1, torch.where(level(net, x) < 0.4, LOW, HIGH),
                                        torch.where(y == 2, LOW, HIGH))
    for eps in (0.03, 0.06):  # no example within rounding of breaking or holding
        assert ((moved.abs() - SHIFT * eps).abs() > 0.008).all()
    runs = {}
    for compiled in (False, True):
        evaluator = Evaluator(task, "cpu", batch_size=8, compile=compiled)
        runs[compiled] = evaluator.run(net, x, y, attacks).flags
    eager, compiled = runs[False], runs[True]
    assert [int(f.sum()) for f in eager.values()] == [10, 6, 2]  # clean, after FGSM, after PGD: non-trivial
    for name in eager:
        assert torch.equal(eager[name], compiled[name]), name
    assert Classification(3).summarize(compiled)["robust_acc"] == pytest.approx(2 / 12)


def one_epoch(net, compiled: bool) -> nn.Module:
    """Two Fast-AT steps (a full batch of 8 and a partial one of 4) through the loop every run uses."""
    x, y = examples()
    task = Classification(3)
    runner = Evaluator(task, "cpu", batch_size=8).compiled(net, 8, 16) if compiled else net
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    mode = MODES["fast"](OmegaConf.structured(TrainingConf(name="fast")))
    loader = TensorLoader(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    train_epoch(runner, loader, mode, task, Attack("fgsm", "linf", 0.05, 0.0625, random_start=True), optimizer,
                make_scheduler(optimizer, "constant", 2), torch.amp.GradScaler("cpu", enabled=False),
                Plan(compile=compiled), torch.device("cpu"))
    return net


@pytest.mark.slow  # inductor compiles each graph with the C++ compiler: seconds each
def test_a_compiled_training_step_updates_as_eager():
    pytest.importorskip("torch._inductor")
    eager, compiled = one_epoch(designed_net(), False), one_epoch(designed_net(), True)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name
    assert not torch.equal(eager[0].weight, designed_net()[0].weight)  # it trained


@pytest.mark.slow  # inductor compiles each graph with the C++ compiler: seconds each
def test_a_compiled_run_saves_the_bare_module(tmp_path):
    pytest.importorskip("torch._inductor")
    cli(*TINY, "epochs=1", "training=standard", "eval.n_examples=20", "compile=true", cwd=tmp_path,
        check=True)
    (run,) = [p.parent for p in tmp_path.rglob("model.pt")]
    assert "compile: true" in (run / "config_resolved.yaml").read_text()
    bare = mlp(**torch.load(run / "model.pt", weights_only=True)["data_kwargs"], hidden=32)
    for name in ("model.pt", "best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)["state_dict"]
        assert set(state) == set(bare.state_dict()), name  # no _orig_mod. or inner. prefix
        bare.load_state_dict(state)


@pytest.mark.slow  # inductor compiles each graph with the C++ compiler: seconds each
def test_compiled_autoattack_breaks_the_examples_eager_breaks():
    # The CUDA default runs eval=autoattack compiled: APGD, FAB-T and Square call the model on shrinking row sets.
    from dataclasses import replace

    from advbench.api import preset
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.rand(40, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # every example correct: the attacks have 40 to break (about half, at this eps)
    aa = preset("autoattack", 0.05)
    attacks = {"apgd_ce": replace(aa["apgd_ce"], steps=5), "apgd_t": replace(aa["apgd_t"], steps=5, n_targets=2),
               "fab_t": replace(aa["fab_t"], steps=3, n_targets=2), "square": replace(aa["square"], steps=20)}
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        runs[compiled] = Evaluator(Classification(4), "cpu", batch_size=32, compile=compiled).flags(
            model, x, y, attacks)
    assert 10 <= runs[False]["square"].sum() <= 30  # the attacks break some, not all
    for name, eager in runs[False].items():  # rounding may move an example on the boundary, no more
        assert abs(int(runs[True][name].sum()) - int(eager.sum())) <= 1, name
        assert int((runs[True][name] != eager).sum()) <= 2, name
