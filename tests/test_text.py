"""Text: fortunes parsing, CSV input, tokens, embedding attacks, the embedding-weights step, the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F

from advbench.attacks.spec import Attack
from advbench.data import load_data
from advbench.data.loaders import TensorLoader
from advbench.attacks.embedding import move_embedding_weights, put_back_embedding_weights
from advbench.tasks.text.task import FromEmbeddings
from advbench.errors import AdvbenchError
from advbench.training.schedules import make_scheduler
from advbench.tasks.text.data import parse_fortunes
from advbench.tasks.text.tokens import build_vocab, encode, tokenize
from advbench.models import TextCNN, TransformerClassifier
from advbench.tasks.text import TextClassification
from advbench.training import Plan, build_mode, train_epoch
from conftest import compose_config
from helpers import advbench, cli, one_line_error, png_size
from omegaconf import OmegaConf


@pytest.fixture
def fortunes_dir(tmp_path):
    """Two categories in the fortunes format; one entry appears in both files."""
    (tmp_path / "food").write_text("Eat your greens.\n%\nPie is good\n  and cake too.\n%\nShared wisdom.\n%\n"
                                   "Soup of the day\n%\nBread and butter\n%\nA fine wine\n%\n")
    (tmp_path / "law").write_text("Shared wisdom.\n%\nThe court is in session.\n%\nObjection!\n%\n"
                                  "Guilty as charged\n%\nThe judge rules\n%\n")
    return tmp_path


def test_parse_fortunes_splits_on_percent_lines(fortunes_dir):
    assert parse_fortunes(fortunes_dir / "food") == ["Eat your greens.", "Pie is good\n  and cake too.",
                                                     "Shared wisdom.", "Soup of the day", "Bread and butter",
                                                     "A fine wine"]


def test_fortunes_task_is_deduplicated_and_stratified(fortunes_dir):
    cfg = compose_config(["dataset=fortunes", f"dataset.fortunes_dir={fortunes_dir}", "dataset.categories=[food,law]",
                          "dataset.val_size=0", "dataset.test_size=0.4"]).dataset
    data = load_data(cfg)
    labels = torch.cat([data.train[1], data.test[1]])
    assert torch.bincount(labels).tolist() == [6, 4]  # "Shared wisdom." kept once, in food
    assert torch.bincount(data.test[1]).tolist() == [2, 2]
    assert data.vocab[:2] == ["<pad>", "<unk>"] and data.shape == (cfg.max_len,)
    with pytest.raises(AdvbenchError, match="no file for categories \\['sport'\\].*apt-get install fortunes"):
        load_data(compose_config(["dataset=fortunes", f"dataset.fortunes_dir={fortunes_dir}",
                                  "dataset.categories=[food,sport]"]).dataset)


def test_tokens_vocab_and_padding():
    assert tokenize("Don't PANIC, 42 times!") == ["don't", "panic", "42", "times"]
    vocab = build_vocab(["b a a", "c a b"], max_size=10, min_freq=2)
    assert vocab == ["<pad>", "<unk>", "a", "b"]
    assert encode(["a zz b a", ""], vocab, 3).tolist() == [[2, 1, 3], [0, 0, 0]]


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")


def test_text_csv_loads_and_names_bad_columns(tmp_path):
    write_csv(tmp_path / "train.csv", ["sentence", "topic"], [["good film", "pos"], ["bad film", "neg"]] * 5)
    write_csv(tmp_path / "test.csv", ["sentence", "topic"], [["good", "pos"], ["bad", "neg"]])
    base = ["dataset=text_csv", f"dataset.train_csv={tmp_path}/train.csv", f"dataset.test_csv={tmp_path}/test.csv",
            "dataset.val_size=2", "dataset.min_freq=1"]
    data = load_data(compose_config(base + ["dataset.text_column=sentence", "dataset.label_column=topic"]).dataset)
    assert data.n_classes == 2 and data.test[1].tolist() == [1, 0]  # labels sorted: neg=0, pos=1
    with pytest.raises(AdvbenchError, match="dataset.text_column='text' is not a column of .*sentence"):
        load_data(compose_config(base + ["dataset.label_column=topic"]).dataset)


def csv_config(tmp_path, train_rows, test_rows, header=("text", "label")):
    write_csv(tmp_path / "train.csv", header, train_rows)
    write_csv(tmp_path / "test.csv", header, test_rows)
    return compose_config(["dataset=text_csv", f"dataset.train_csv={tmp_path}/train.csv",
                           f"dataset.test_csv={tmp_path}/test.csv", "dataset.val_size=2",
                           "dataset.min_freq=1"]).dataset


def test_numeric_labels_sort_as_numbers_and_names_are_kept(tmp_path):
    rows = [[f"text {i}", label] for i, label in enumerate(["10", "2", "1"] * 4)]
    data = load_data(csv_config(tmp_path, rows, [["x", "2"], ["y", "10"]]))
    assert data.classes == ["1", "2", "10"] and data.test[1].tolist() == [1, 2]


def test_a_test_file_sorted_by_label_is_read_in_a_fixed_random_order(tmp_path):
    rows = [[f"text {i}", label] for i, label in enumerate(["neg"] * 5 + ["pos"] * 5)]
    data = load_data(csv_config(tmp_path, rows, rows))
    labels = data.test[1].tolist()
    assert sorted(labels) == [0] * 5 + [1] * 5 and len(set(labels[:4])) == 2  # eval.n_examples=4: both classes
    assert labels == load_data(csv_config(tmp_path, rows, rows)).test[1].tolist()


def test_a_single_class_data_set_is_refused(tmp_path, fortunes_dir):
    with pytest.raises(AdvbenchError, match="1 class; a classifier needs at least 2"):
        load_data(csv_config(tmp_path, [["a", "pos"], ["b", "pos"]] * 3, [["c", "pos"]]))
    with pytest.raises(AdvbenchError, match="1 class"):
        load_data(compose_config(["dataset=fortunes", f"dataset.fortunes_dir={fortunes_dir}",
                                  "dataset.categories=[food]", "dataset.val_size=0"]).dataset)


def test_non_utf8_and_ragged_csv_files_get_one_line_errors(tmp_path):
    cfg = csv_config(tmp_path, [["a", "x"], ["b", "y"]] * 3, [["c", "x"]])
    (tmp_path / "train.csv").write_bytes("text,label\nna\xefve caf\xe9,x\nb,y\n".encode("latin-1"))
    with pytest.raises(AdvbenchError, match="train.csv is not UTF-8 text.*iconv") as err:
        load_data(cfg)
    assert "\n" not in str(err.value)
    (tmp_path / "train.csv").write_text("text,label\na,x\nb\nc,y\n")
    with pytest.raises(AdvbenchError, match="train.csv, line 3: 1 fields where the header has 2"):
        load_data(cfg)
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y,z\n")
    with pytest.raises(AdvbenchError, match="line 3"):
        load_data(cfg)


def test_the_fortunes_test_split_is_not_ordered_by_class(tmp_path):
    for name, n in (("food", 40), ("law", 40)):
        (tmp_path / name).write_text("".join(f"{name} entry number {i}\n%\n" for i in range(n)))
    cfg = compose_config(["dataset=fortunes", f"dataset.fortunes_dir={tmp_path}", "dataset.categories=[food,law]",
                          "dataset.val_size=0", "dataset.test_size=0.5"]).dataset
    labels = load_data(cfg).test[1]
    assert labels.tolist() == load_data(cfg).test[1].tolist()  # a fixed order
    assert 0 < labels[:10].sum() < 10 and data_classes(cfg) == ["food", "law"]


def data_classes(cfg):
    return load_data(cfg).classes


@pytest.mark.parametrize("model_cls", [TextCNN, TransformerClassifier])
@pytest.mark.parametrize("name, norm, eps", [("fgm", "l2", 0.5), ("pgd", "l2", 0.5), ("fgsm", "linf", 0.05)])
def test_embedding_attacks_stay_in_the_ball_and_leave_padding(model_cls, name, norm, eps):
    torch.manual_seed(0)
    model = model_cls((12,), 3, vocab_size=30).eval()
    ids = torch.randint(1, 30, (6, 12))
    ids[:, 8:] = 0
    y = torch.arange(6) % 3
    attack = Attack(name, norm, eps, eps / 4 if name == "pgd" else eps, 5 if name == "pgd" else 1,
                    name == "pgd", target="embedding", task=TextClassification(3))
    emb_adv = attack(model, ids, y)
    delta = emb_adv - model.embedding(ids).detach()
    size = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)
    assert (size <= eps + 1e-5).all() and (size > 0.5 * eps).all()
    assert (emb_adv[:, 8:] == 0).all()  # padding stays padding
    assert all(p.grad is None for p in model.parameters())
    clean_loss = F.cross_entropy(model(ids), y)
    assert F.cross_entropy(FromEmbeddings(model)(emb_adv), y) > clean_loss


def test_embedding_weights_are_restored_bit_for_bit():
    model = TextCNN((10,), 2, vocab_size=20)
    ids, y = torch.randint(1, 20, (4, 10)), torch.tensor([0, 1, 0, 1])
    F.cross_entropy(model(ids), y).backward()
    before = model.embedding.weight.detach().clone()
    backup = move_embedding_weights(model.embedding, 1.0)
    moved = model.embedding.weight.detach() - before
    assert moved.norm().item() == pytest.approx(1.0, rel=1e-4)
    put_back_embedding_weights(model.embedding, backup)
    assert torch.equal(model.embedding.weight, before)


def test_embedding_weights_step_with_lr_zero_changes_no_weight():
    torch.manual_seed(0)
    model = TextCNN((10,), 2, vocab_size=20)
    ids, y = torch.randint(1, 20, (16, 10)), torch.arange(16) % 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.embedding.register_forward_hook(lambda m, i, o: seen.append(m.weight.detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    task = TextClassification(2)
    mode = build_mode(OmegaConf.create({"name": "mixed", "adv_weight": 0.5}), task)
    attack = Attack("fgm", "l2", 1.0, 1.0, target="embedding_weights", task=task)
    stats = train_epoch(model, TensorLoader(ids, y, 16), mode, task, attack, optimizer,
                        make_scheduler(optimizer, "constant", 1), torch.amp.GradScaler("cpu", enabled=False), Plan(),
                        torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(seen) >= 2 and not torch.equal(seen[0], seen[1])  # the adversarial pass saw perturbed weights
    assert stats["train_adv_acc"] is not None


def test_textcnn_trains_with_fgm_through_the_cli_and_evaluates(tmp_path):
    advbench("dataset=fortunes", "model=textcnn", "training=mixed", "attack=fgm", "eps=1.0", "epochs=1",
             "progress=false", "threads=2", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["robust_acc_by_attack"]) == ["fgm_embedding", "pgd10_embedding"]  # and PGD-10 by default
    assert results["attacks"]["fgm_embedding"]["target"] == "embedding"
    assert results["robust_acc"] <= results["clean_acc"] and results["clean_acc"] > 1 / 6
    checkpoint = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert checkpoint["vocab"][:3] == ["<pad>", "<unk>", "the"]
    advbench("job=eval", f"checkpoint={tmp_path}/run", "progress=false", f"hydra.run.dir={tmp_path}/eval",
             cwd=tmp_path)
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert again["clean_acc"] == results["clean_acc"] and again["robust_acc"] == results["robust_acc"]


@pytest.mark.parametrize("overrides, expected", [
    (["dataset=synthetic_text", "model=textcnn", "training=mixed", "attack=fgm", "attack.target=input"],
     "attack.target=input on text classification data"),
    (["dataset=synthetic", "attack.target=embedding"], "attack.target=embedding needs a text model"),
    (["dataset=synthetic_text", "model=mlp", "training=mixed", "attack=fgm"], "model=mlp does not take text"),
    (["dataset=synthetic_text", "model=textcnn", "training=adversarial", "attack=fgm"],
     "training=adversarial on text classification data: expected training=standard or mixed"),
    (["dataset=synthetic_text", "model=textcnn", "training=mixed", "attack=pgd", "attack.target=embedding_weights"],
     "attack.target=embedding_weights takes attack=fgm, or pgd with attack.norm=l2"),
])
def test_text_and_image_mismatches_get_one_line_errors(tmp_path, overrides, expected):
    code, err = cli(*overrides, "epochs=1", "progress=false", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert code == 2
    one_line_error(err, expected)


def test_token_saliency_writes_html_and_png(tmp_path):
    advbench("dataset=synthetic_text", "model=textcnn", "training=mixed", "attack=fgm", "eps=1.0", "epochs=2",
             "progress=false", "threads=1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    advbench("job=saliency", f"checkpoint={tmp_path}/run", "saliency.n_examples=4", "progress=false",
             f"hydra.run.dir={tmp_path}/sal", cwd=tmp_path)
    page = (tmp_path / "sal" / "saliency.html").read_text()
    assert page.count("<p><b>y=") == 4 and "rgba(255, 80, 0, 1.00)" in page  # each text's top token
    width, height = png_size(tmp_path / "sal" / "saliency_text.png")
    assert width > 200 and height > 100


def test_text_json_lines_load_with_named_keys_and_bad_lines_are_one_line_errors(tmp_path):
    import json as json_
    train = [{"sentence": f"good film {i}", "topic": 1} if i % 2 else {"sentence": f"bad film {i}", "topic": 0}
             for i in range(10)]
    (tmp_path / "train.jsonl").write_text("\n".join(json_.dumps(r) for r in train) + "\n\n")
    (tmp_path / "test.jsonl").write_text('{"sentence": "good", "topic": 1}\n{"sentence": "bad", "topic": 0}\n')
    base = ["dataset=text_json", f"dataset.train_json={tmp_path}/train.jsonl",
            f"dataset.test_json={tmp_path}/test.jsonl", "dataset.val_size=2", "dataset.min_freq=1",
            "dataset.text_column=sentence", "dataset.label_column=topic"]
    data = load_data(compose_config(base).dataset)
    assert data.classes == ["0", "1"] and data.test[1].tolist() == [1, 0] and data.task == "text"
    (tmp_path / "test.jsonl").write_text('{"sentence": "good", "topic": 1}\n{"text": "bad"}\n')
    with pytest.raises(AdvbenchError, match=r"test.jsonl, line 2: no 'sentence' key"):
        load_data(compose_config(base).dataset)
    (tmp_path / "test.jsonl").write_text('{"sentence": "good", "topic": 1}\nnot json\n')
    with pytest.raises(AdvbenchError, match=r"test.jsonl, line 2: not a JSON object"):
        load_data(compose_config(base).dataset)


def test_sentence_pairs_get_a_separator_negative_second_ids_and_longest_first_truncation():
    vocab = build_vocab([("a b", "c"), ("a", "a c")], max_size=10, min_freq=1)
    assert vocab == ["<pad>", "<unk>", "<sep>", "a", "c", "b"]
    ids = encode([("a b", "c"), ("a b a b a", "c")], vocab, 5)
    assert ids.tolist() == [[3, 5, 2, -4, 0], [3, 5, 3, 2, -4]]
    assert encode([("a b a b a", "c c c c")], vocab, 5).tolist() == [[3, 5, 2, -4, -4]]  # each keeps 2 of 4
    task = TextClassification(2, vocab=vocab, special=[2])
    assert task.pinned(ids).tolist() == [[False, False, True, False, True], [False, False, False, True, False]]
    model = TextCNN((5,), 2, len(vocab)).eval()
    with torch.no_grad():  # no segment embeddings: a second-segment token embeds as itself
        assert torch.equal(model.embedding(ids), model.embedding(ids.abs()))


def test_a_pair_column_loads_pairs_and_a_missing_one_is_named(tmp_path):
    rows = [["a cat", "a dog", "no"], ["a cat", "a cat", "yes"]] * 5
    write_csv(tmp_path / "train.csv", ["premise", "hypothesis", "label"], rows)
    write_csv(tmp_path / "test.csv", ["premise", "hypothesis", "label"], rows[:2])
    base = ["dataset=text_csv", f"dataset.train_csv={tmp_path}/train.csv", f"dataset.test_csv={tmp_path}/test.csv",
            "dataset.val_size=2", "dataset.text_column=premise", "dataset.min_freq=1", "dataset.max_len=8"]
    data = load_data(compose_config(base + ["dataset.text_pair_column=hypothesis"]).dataset)
    assert data.vocab[2] == "<sep>" and data.special == (2,)
    cat, dog = data.vocab.index("cat"), data.vocab.index("dog")
    assert data.test[0][0, :5].tolist() == [data.vocab.index("a"), cat, 2, -data.vocab.index("a"), -dog]
    with pytest.raises(AdvbenchError, match="dataset.text_pair_column='second' is not a column of .*hypothesis"):
        load_data(compose_config(base + ["dataset.text_pair_column=second"]).dataset)


def test_dynamic_padding_cuts_each_batch_after_its_longest_text():
    ids = torch.tensor([[5, 6, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0], [5, 6, 7, 8, 0, 0], [0, 0, 0, 0, 0, 0]])
    task = TextClassification(2)
    widths = [x.shape[1] for x, _ in TensorLoader(ids, torch.zeros(4, dtype=torch.long), 2, trim=task.trim)]
    assert widths == [2, 4]
    assert task.trim(ids[3:]).shape == (1, 1)  # an empty text keeps one (padding) position
    model = TransformerClassifier((6,), 2, 10).eval()
    with torch.no_grad():
        assert torch.allclose(model(ids[:3]), model(task.trim(ids[:3])), atol=1e-6)


def test_macro_f1_is_computed_on_each_texts_worst_case_prediction():
    from sklearn.metrics import f1_score
    task = TextClassification(3)
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    clean = torch.eye(3)[[0, 1, 1, 2, 2, 2]]  # text 1 wrong already
    adv = torch.eye(3)[[2, 1, 0, 2, 2]]  # the attack moves texts 0 (to 2) and 3 (to 0) of the 5 correct ones
    records = task.new_records(["pgd"], 6)
    records.add_clean(range(6), clean, y)
    attacked = [0, 2, 3, 4, 5]
    records.add_attack(attacked, adv)
    records.close("pgd", range(6))
    flags = {"clean": task.correct(clean, y), "pgd": torch.tensor([False, False, True, False, True, True])}
    found = task.summarize(flags, records)
    worst = [2, 1, 1, 0, 2, 2]
    assert found["robust_acc"] == pytest.approx(3 / 6)
    assert found["clean_macro_f1"] == pytest.approx(f1_score(y, [0, 1, 1, 2, 2, 2], average="macro"), abs=1e-6)
    assert found["robust_macro_f1"] == pytest.approx(f1_score(y, worst, average="macro"), abs=1e-6)
    assert found["robust_macro_f1_by_attack"]["pgd"] == found["robust_macro_f1"] < found["clean_macro_f1"]


@pytest.mark.parametrize("pieces, words", [
    (["[CLS]", "play", "##ing", "ball", "[SEP]", "##s", "[SEP]"], ["[CLS]", "playing", "ball", "[SEP]", "s", "[SEP]"]),
    (["<s>", "Hello", "\u0120wor", "ld", "</s>"], ["<s>", "Hello", "world", "</s>"]),  # byte-level BPE
    (["\u2581Hel", "lo", "\u2581world"], ["Hello", "world"]),  # SentencePiece
    (["don't", "panic", "<sep>", "now"], ["don't", "panic", "<sep>", "now"]),  # advbench's words
])
def test_word_pieces_join_into_words_with_the_norm_of_their_gradients(pieces, words):
    from advbench.tasks.text.saliency import continues_word, join_pieces
    vocab = pieces * 2 if any(p.startswith(("\u0120", "\u2581")) for p in pieces) else pieces
    special = [p in ("[CLS]", "[SEP]", "<s>", "</s>", "<sep>") for p in pieces]
    norms = [3.0, 5.0, 12.0, 1.0, 2.0, 4.0, 6.0][:len(pieces)]
    got, got_norms = join_pieces(pieces, norms, special, continues_word(vocab))
    assert got == words
    if words[1] == "playing":
        assert got_norms[:2] == [3.0, 13.0]  # sqrt(5^2 + 12^2): the word's pieces' gradients as one vector


@pytest.mark.parametrize("bad", [0.0, float("inf")])
def test_a_zero_or_overflowed_gradient_moves_no_embedding_weight(bad):
    embedding = torch.nn.Embedding(5, 3)
    before = embedding.weight.detach().clone()
    embedding.weight.grad = torch.full((5, 3), bad)
    backup = move_embedding_weights(embedding, 0.5)
    assert torch.equal(embedding.weight, before) and torch.equal(backup, before)
