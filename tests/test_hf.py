"""Hugging Face text models: the adapter, padding, the embedding-matrix recipe, FreeLB, SMART, the CLI.

The model and tokenizer are built offline: a BERT config with random weights and a WordPiece tokenizer trained on
the synthetic texts with the `tokenizers` library, saved to a temporary directory.
"""
import contextlib
import json

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers import cli

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from advbench.attacks.embedding import move_embedding_weights, put_back_embedding_weights  # noqa: E402
from advbench.models.hf import HFClassifier, hf_classifier  # noqa: E402
from advbench.tasks.text import TextClassification  # noqa: E402
from advbench.training import Batch, build_mode  # noqa: E402

TASK = TextClassification(3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from advbench.tasks.text.data import synthetic_text
    from advbench.tasks.text.tiny_bert import build_tiny_bert
    texts = synthetic_text(OmegaConf.create({"n_classes": 3, "n_train": 300, "n_test": 10}))[0][0]
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), texts, 3, vocab_size=200, hidden=32,
                           max_len=64)


def batch_of(tiny_dir, texts=("k0x1 w3 w4 k0x2", "w1 k1x3 w9 w10 w11 k1x0 w2", "k2x4")):
    from advbench.tasks.text.tokens import hf_encoder
    _, _, encode = hf_encoder(str(tiny_dir), 16)
    return encode(list(texts)), torch.tensor([0, 1, 2])


def special_task(tiny_dir) -> TextClassification:
    """The task as a run builds it: the tokenizer's special tokens ([CLS], [SEP]) pinned."""
    from advbench.tasks.text.tokens import hf_encoder
    vocab, special, _ = hf_encoder(str(tiny_dir), 16)
    assert [vocab[i] for i in special] == ["[CLS]", "[SEP]", "[MASK]"]
    return TextClassification(3, vocab=vocab, special=special)


@pytest.mark.parametrize("kind", ["BertConfig", "RobertaConfig", "DistilBertConfig"])
def test_the_adapter_finds_the_input_embeddings_of_each_architecture(kind):
    config = getattr(transformers, kind)(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=32, num_labels=3,
                                         **({"dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32}
                                            if kind == "DistilBertConfig" else {}))
    model = HFClassifier(transformers.AutoModelForSequenceClassification.from_config(config)).eval()
    assert model.embedding.layer is model.model.get_input_embeddings()
    ids = torch.tensor([[3, 7, 9, 0, 0], [4, 5, 0, 0, 0]])
    with torch.no_grad():
        out = model(ids)
        assert out.shape == (2, 3)
        assert (model.embedding(ids)[ids == 0] == 0).all()  # padding embeds to zero, and is masked


def test_padding_changes_nothing_and_padding_and_special_tokens_are_never_perturbed(tiny_dir):
    model = hf_classifier((16,), 3, name_or_path=str(tiny_dir)).eval()
    ids, y = batch_of(tiny_dir)
    task = special_task(tiny_dir)
    longer = torch.cat([ids, torch.zeros(3, 8, dtype=torch.long)], 1)
    with torch.no_grad():
        assert torch.allclose(model(ids), model(longer), atol=1e-5)  # more padding: the same logits
        assert torch.equal(task.trim(longer), ids[:, :int((ids != 0).sum(1).max())])  # dynamic padding
        clean = model.embedding(ids)
    import advbench
    emb_adv = advbench.attack("pgd", eps=1.0, norm="l2", target="embedding", steps=3, task=task)(model, ids, y)
    special = task.pinned(ids) & (ids != 0)
    assert special.sum() == 6  # [CLS] and [SEP] of each text
    assert (emb_adv[ids == 0] == 0).all() and torch.equal(emb_adv[special], clean[special])
    moved = (emb_adv - clean).norm(dim=-1)[~task.pinned(ids)]
    assert (moved > 0).all()  # every word piece moved


def test_the_embedding_matrix_is_restored_bit_for_bit(tiny_dir):
    model = hf_classifier((16,), 3, name_or_path=str(tiny_dir))
    ids, y = batch_of(tiny_dir)
    F.cross_entropy(model(ids), y).backward()
    before = model.embedding.weight.detach().clone()
    backup = move_embedding_weights(model.embedding, 0.5)
    assert not torch.equal(model.embedding.weight, before)
    put_back_embedding_weights(model.embedding, backup)
    assert torch.equal(model.embedding.weight, before)


def _freelb_batch(model, ids, y, update, backward, steps=2, alpha=0.3, eps=1.0, task=TASK):
    attack = type("Bound", (), {"steps": steps, "alpha": alpha, "target": "embedding", "name": "pgd"})()
    return Batch(model, model, task, ids, y, attack=attack, eps=eps, autocast=contextlib.nullcontext, update=update,
                 backward=backward)


def test_freelb_accumulates_the_gradient_of_each_ascent_step(tiny_dir):
    torch.manual_seed(0)
    model = hf_classifier((16,), 3, name_or_path=str(tiny_dir)).eval()  # eval: no dropout, so both runs agree
    ids, y = batch_of(tiny_dir)
    params = [p for p in model.parameters() if p.requires_grad]

    def update(loss, after=None):
        model.zero_grad(set_to_none=True)
        loss.backward()
        if after:
            after()
    task = special_task(tiny_dir)
    mode = build_mode(OmegaConf.create({"name": "freelb", "init_mag": 0.0}), task)
    mode.step(_freelb_batch(model, ids, y, update, lambda loss: loss.backward(), task=task))
    got = [p.grad.clone() for p in params]

    # the direct computation: two steps, delta_1 = alpha g / ||g|| (within norm eps) on the word pieces only
    # (padding, [CLS] and [SEP] stay), the gradients of both losses / 2 summed
    model.zero_grad(set_to_none=True)
    real = (ids > 5)[..., None].float()  # ids 1-5 (stored + 1): [PAD], [UNK], [CLS], [SEP], [MASK]
    delta = torch.zeros(*ids.shape, 32, requires_grad=True)
    (F.cross_entropy(model.classify(model.embedding(ids) + delta), y) / 2).backward()
    g = delta.grad * real
    step = 0.3 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
    step = step * (1.0 / step.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1)
    (F.cross_entropy(model.classify(model.embedding(ids) + step * real), y) / 2).backward()
    for a, p in zip(got, params):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_pgd_on_the_embedding_matrix_is_the_recipe_as_widely_written(tiny_dir):
    torch.manual_seed(0)
    model = hf_classifier((16,), 3, name_or_path=str(tiny_dir)).eval()  # eval: no dropout, so both runs agree
    ids, y = batch_of(tiny_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    weight, clean = model.embedding.weight, model.embedding.weight.detach().clone()
    steps, alpha, eps, w = 3, 0.3, 0.5, 0.5

    def update(loss, after=None):
        model.zero_grad(set_to_none=True)
        loss.backward()
        after()
    attack = type("Bound", (), {"steps": steps, "alpha": alpha, "target": "embedding_weights", "name": "pgd"})()
    mode = build_mode(OmegaConf.create({"name": "mixed", "adv_weight": w}), TASK)
    mode.step(Batch(model, model, TASK, ids, y, attack=attack, eps=eps, autocast=contextlib.nullcontext,
                    update=update, backward=lambda loss: loss.backward()))
    got = [p.grad.clone() for p in params]
    assert torch.equal(weight, clean)  # the matrix is back, bit for bit

    # the recipe as the NLP competitions copy it: back up the gradients, K attack steps on the matrix (each
    # projected onto the Frobenius ball around the clean matrix), zero the gradients between steps, restore
    # them before the last backward pass, restore the matrix
    model.zero_grad(set_to_none=True)
    ((1 - w) * F.cross_entropy(model(ids), y)).backward()
    grad_backup = [p.grad.clone() for p in params]
    for t in range(steps):
        weight.data.add_(alpha * weight.grad / weight.grad.norm())
        r = weight.data - clean
        if r.norm() > eps:
            weight.data = clean + eps * r / r.norm()
        if t != steps - 1:
            model.zero_grad()
        else:
            for p, g in zip(params, grad_backup):
                p.grad = g.clone()
        (w * F.cross_entropy(model(ids), y)).backward()
    weight.data = clean.clone()
    assert (weight.grad - grad_backup[params.index(weight)]).norm() > 0  # the adversarial gradient was added
    for a, p in zip(got, params):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_cli_trains_a_tiny_offline_bert_with_freelb_smart_and_matrix_pgd(tiny_dir, tmp_path):
    base = ["dataset=synthetic_text", "dataset.max_len=16", "model=hf",  # the data tokenized with the model's own
            f"model.name_or_path={tiny_dir}", "attack=pgd", "attack.norm=l2", "attack.target=embedding",
            "attack.steps=2", "eps=1.0", "epochs=1", "progress=false", "threads=1"]
    runs = {"freelb": ["training=freelb"], "smart": ["training=smart"],
            "mixed": ["training=mixed", "attack.target=embedding_weights"]}  # PGD-2 on the embedding matrix
    for mode, overrides in runs.items():
        cli(*base, *overrides, f"hydra.run.dir={tmp_path}/{mode}", cwd=tmp_path, check=True)
        results = json.loads((tmp_path / mode / "results.json").read_text())
        assert results["labels"]["model"] == "hf" and results["labels"]["training"] == mode
        assert results["n_examples"] == 90 and 0 <= results["robust_acc"] <= results["clean_acc"] <= 1
        rows = (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
        assert json.loads(rows[0])["train_loss"] > 0
        run = tmp_path / mode
        written = {p.name for p in run.iterdir()} | {p.name for p in (run / ".hydra").iterdir()}
        assert {"config.yaml", "config_resolved.yaml", "metrics.jsonl", "results.json", "summary.md", "model.pt",
                "best.pt", "last.pt", "curves.png", "robust_flags.npz", "advbench.log", "status"} <= written
        vocab = torch.load(tmp_path / mode / "model.pt", weights_only=True)["vocab"]
        assert vocab[:4] == ["<pad>", "[PAD]", "[UNK]", "[CLS]"]  # the model's own tokenizer's ids, shifted by one


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_embedding_attacks_under_autocast_keep_their_gradient(tiny_dir, dtype, device):
    model = hf_classifier((16,), 3, name_or_path=str(tiny_dir)).eval().to(device)
    ids, y = (t.to(device) for t in batch_of(tiny_dir))
    import advbench
    attack = advbench.attack("fgm", eps=0.05, target="embedding", task=TASK)
    with torch.autocast(device, dtype=dtype):
        emb_adv = attack(model, ids, y)
    with torch.no_grad():
        step = (emb_adv - model.embedding(ids)).float()
    assert torch.isfinite(step).all() and step.flatten(1).norm(dim=1).min() > 0.04  # a full FGM step, no underflow


def test_sentence_pairs_reach_the_model_with_their_token_types(tiny_dir):
    from advbench.tasks.text.tokens import hf_encoder
    _, _, encode = hf_encoder(str(tiny_dir), 16)
    pairs = [("k0x1 w3", "w4 k0x2 w5"), ("w1 k1x3", "k2x4")]
    ids = encode(pairs)
    assert (ids < 0).any(1).all()  # each pair's second segment is stored negative
    model = hf_classifier((16,), 3, name_or_path=str(tiny_dir)).eval()
    found = transformers.AutoTokenizer.from_pretrained(tiny_dir)([p[0] for p in pairs], [p[1] for p in pairs],
                                                                  padding="max_length", max_length=16,
                                                                  return_tensors="pt")
    with torch.no_grad():
        own = model.model(**found).logits  # input_ids, token_type_ids, attention_mask
        assert torch.allclose(model(ids), own, atol=1e-5)
        assert not torch.allclose(model(ids.abs()), own, atol=1e-5)  # the token types matter to this model


def test_a_pair_data_set_trains_an_hf_model_and_its_saliency_joins_word_pieces(tiny_dir, tmp_path):
    rows = [[f"k{c}x1 w1{i % 10}", f"w2{i % 10} k{c}x2 w123", str(c)] for i in range(30) for c in range(3)]
    for split, part in (("train", rows), ("test", rows[:12])):
        (tmp_path / f"{split}.csv").write_text("a,b,label\n" + "\n".join(",".join(r) for r in part) + "\n")
    run = ["dataset=text_csv", f"dataset.train_csv={tmp_path}/train.csv", f"dataset.test_csv={tmp_path}/test.csv",
           "dataset.text_column=a", "dataset.text_pair_column=b", "dataset.val_size=9", f"dataset.tokenizer={tiny_dir}",
           "dataset.max_len=16", "model=hf", f"model.name_or_path={tiny_dir}", "training=mixed", "attack=fgm",
           "eps=0.5", "epochs=1", "progress=false", "threads=1"]
    cli(*run, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["n_examples"] == 12 and 0 <= results["clean_macro_f1"] <= 1
    # the last attack under the cascade (PGD-10 after the run's FGM) holds every text's worst case
    assert results["robust_macro_f1_by_attack"]["pgd10_embedding"] == results["robust_macro_f1"]
    assert f"- macro F1: robust {results['robust_macro_f1']:.4f}" in (tmp_path / "run" / "summary.md").read_text()
    cli("job=saliency", f"checkpoint={tmp_path}/run", "saliency.n_examples=2", "progress=false",
        f"hydra.run.dir={tmp_path}/sal", cwd=tmp_path, check=True)
    page = (tmp_path / "sal" / "saliency.html").read_text()
    assert ">w123</span>" in page and "##" not in page  # w123 is the pieces w12 and ##3, joined
    assert page.count(">[SEP]</span>") == 4  # both segments of both pairs closed by [SEP]


def test_a_run_given_a_relative_model_folder_loads_from_any_directory(tiny_dir, tmp_path, monkeypatch):
    # Relative, `models/bert` reads as a hub id (org/name) wherever no such folder is: model.pt keeps it whole.
    import shutil
    import advbench
    shutil.copytree(tiny_dir, tmp_path / "models" / "bert")
    rows = [[f"k{c}x1 w1{i % 10} k{c}x2", str(c)] for i in range(20) for c in range(3)]
    for split, part in (("train", rows), ("test", rows[:9])):
        (tmp_path / f"{split}.csv").write_text("text,label\n" + "\n".join(",".join(r) for r in part) + "\n")
    cli("dataset=text_csv", "dataset.train_csv=train.csv", "dataset.test_csv=test.csv", "dataset.val_size=6",
        "dataset.max_len=16", "model=hf", "model.name_or_path=models/bert", "training=standard", "epochs=1",
        "eval=pgd20", "eval.attacks.pgd20.steps=1", "progress=false", "threads=1", "hydra.run.dir=run",
        cwd=tmp_path, check=True)
    stored = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["config"]["model"]
    assert stored["name_or_path"] == stored["tokenizer"] == str((tmp_path / "models" / "bert").resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id would fail here at once
    model = advbench.load_model(str(tmp_path / "run"))
    assert isinstance(model, HFClassifier)
    assert OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml").model.name_or_path == "models/bert"
