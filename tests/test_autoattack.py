"""Standard AutoAttack: advbench's own against the reference implementation, the presets, eval.batch_size=auto."""
import pytest
import torch

import advbench
from advbench.evaluation.batch import auto_batch_size, largest_output_bytes
from advbench.models.image import mlp, small_cnn


def test_standard_autoattack_is_no_weaker_than_the_reference(trained_mlp, digits):
    pytest.importorskip("pyautoattack")
    x, y = digits.test[0][:400], digits.test[1][:400]
    torch.manual_seed(0)
    ours = advbench.evaluate(trained_mlp, [(x, y)], "autoattack", eps=0.1, sanity=False)
    reference = advbench.evaluate(trained_mlp, [(x, y)], "autoattack_reference", eps=0.1, sanity=False)
    assert list(ours["robust_acc_by_attack"]) == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert ours["clean_acc"] == reference["clean_acc"] and ours["n_examples"] == 400
    # the bound: no more than half a point above the reference on the same model and examples
    assert ours["robust_acc"] <= reference["robust_acc"] + 0.005


def test_eval_batch_size_auto_on_the_cpu_keeps_the_largest_layer_output_cache_sized():
    cnn = small_cnn((1, 28, 28), 10, (0.5,), (0.5,)).train()
    rng = torch.get_rng_state()
    assert largest_output_bytes(cnn, (1, 28, 28)) == 16 * 28 * 28 * 4  # the first conv's output, per example
    assert auto_batch_size(cnn, (1, 28, 28), "cpu") == 64  # 64 * 50 KB is the largest power of two in 4 MiB
    assert cnn.training and all(p.grad is None for p in cnn.parameters())  # the probe left the model as it was
    assert torch.equal(torch.get_rng_state(), rng)  # and the global random stream
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 256, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(256, 2))
    assert auto_batch_size(wide, (3, 32, 32), "cpu") == 32  # 1 MB per example: never below 32
    assert auto_batch_size(mlp((1, 8, 8), 10, (0.5,), (0.5,)), (1, 8, 8), "cpu") == 500  # small: the usual 500
    assert auto_batch_size(torch.nn.Linear(4, 2), (4,), "cpu") == 500  # no image: nothing to probe
    assert auto_batch_size(cnn, (3, 28, 28), "cpu") == 500  # a probe the model refuses: the usual 500
    assert not any(m._forward_hooks for m in cnn.modules())  # and no hook left behind


def test_eval_batch_size_auto_probes_cuda_memory():
    largest = 3000  # a fake device memory: batches up to this fit
    seen = []

    def fits(model, shape, batch, device):
        seen.append(batch)
        return batch <= largest
    assert auto_batch_size(torch.nn.Linear(4, 2), (1, 2, 2), "cuda", fits=fits) == 2048
    assert seen[:4] == [512, 1024, 2048, 4096]


def test_eval_batch_size_auto_keeps_500_where_a_probe_cannot_drive_the_model():
    def structured(model, shape, batch, device):  # a detector: its outputs are no tensor to sum
        raise TypeError("'dict' object has no attribute 'float'")
    assert auto_batch_size(torch.nn.Linear(4, 3), (3, 8, 8), "cuda", fits=structured) == 500
    assert auto_batch_size(torch.nn.Embedding(9, 2), (16,), "cuda", fits=structured) == 500  # token ids
