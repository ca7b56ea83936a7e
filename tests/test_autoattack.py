"""Standard AutoAttack: advbench's own against the reference implementation, the presets, eval.batch_size=auto."""
import pytest
import torch

import advbench
from advbench.evaluation.batch import auto_batch_size


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


def test_eval_batch_size_auto_is_500_on_the_cpu_and_probes_cuda_memory():
    assert auto_batch_size(torch.nn.Linear(4, 2), (4,), "cpu") == 500
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
