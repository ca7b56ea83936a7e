"""Text data: the fortunes topic task, the user's CSV and JSON lines files, a synthetic task.

Loaders return raw ``(texts, labels)`` for train and test, a text being a string or a (text, pair) tuple;
``encoded`` turns them into padded token-id tensors (tasks/text/tokens.py).
"""
import csv
import json
import random
from pathlib import Path

import torch

from advbench.data.source import Source
from advbench.tasks.text.tokens import build_vocab, encode, hf_encoder, special_ids
from advbench.errors import AdvbenchError

FORTUNES = Path("/usr/share/games/fortunes")


def parse_fortunes(path: Path) -> list:
    """The entries of one fortunes file: blocks separated by lines holding a single ``%``."""
    entries, block = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() + ["%"]:
        if line.strip() == "%":
            if "".join(block).strip():
                entries.append("\n".join(block).strip())
            block = []
        else:
            block.append(line)
    return entries


def _stratified_split(texts, labels, test_size: float, seed: int):
    """A fixed split keeping each class's share in both halves, each in a fixed random order (so the first n
    test examples are not all of one class)."""
    rng, train, test = random.Random(seed), [], []
    for label in sorted(set(labels)):
        members = [t for t, lab in zip(texts, labels) if lab == label]
        rng.shuffle(members)
        n_test = max(1, round(test_size * len(members)))
        test += [(t, label) for t in members[:n_test]]
        train += [(t, label) for t in members[n_test:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return tuple(map(list, zip(*train))), tuple(map(list, zip(*test)))


def fortunes(cfg):
    """Topic classification over fortunes categories (Debian's ``fortunes``), deduplicated, fixed split."""
    root = Path(cfg.fortunes_dir)
    if not cfg.categories:
        raise AdvbenchError("dataset.categories=[]: name at least 2 fortunes files, one class each, e.g. "
                            f"[computers, food] (under dataset.fortunes_dir={root})")
    missing = [c for c in cfg.categories if not (root / c).is_file()]
    if missing:
        raise AdvbenchError(f"dataset=fortunes: no file for categories {missing} under dataset.fortunes_dir={root}; "
                            "install them with `apt-get install fortunes` or choose dataset.categories from "
                            f"{sorted(p.name for p in root.iterdir() if '.' not in p.name) if root.is_dir() else []}")
    seen, texts, labels = set(), [], []
    for label, category in enumerate(cfg.categories):
        for entry in parse_fortunes(root / category):
            if entry not in seen:  # some fortunes appear in several files: keep the first
                seen.add(entry)
                texts.append(entry)
                labels.append(label)
    return (*_stratified_split(texts, labels, cfg.test_size, cfg.split_seed), list(cfg.categories))


def _columns(cfg) -> tuple:
    """The config keys naming the columns a file must have."""
    return ("text_column", "label_column") + (("text_pair_column",) if cfg.text_pair_column else ())


def _text_of(row: dict, cfg, where: str):
    """A row's text, or its (text, pair) for sentence-pair data (dataset.text_pair_column); a JSON null is an
    error (str() would make it the text "None")."""
    columns = ("text_column", "text_pair_column") if cfg.text_pair_column else ("text_column",)
    for column in columns:
        if row[getattr(cfg, column)] is None:
            raise AdvbenchError(f"{where}: no text (null) in dataset.{column}={getattr(cfg, column)!r}")
    texts = tuple(str(row[getattr(cfg, column)]) for column in columns)
    return texts if cfg.text_pair_column else texts[0]


def _label_of(row: dict, cfg, where: str) -> str:
    """A row's label as a class name; an empty cell or a JSON null (which str() would make a class "None") or a
    JSON list or object is an error naming the line and dataset.label_column."""
    label = row[cfg.label_column]
    if isinstance(label, (dict, list)) or label is None or not str(label).strip():
        shown = "null" if label is None else str(label)[:40] if str(label).strip() else "empty"
        raise AdvbenchError(f"{where}: label {shown} in dataset.label_column={cfg.label_column!r}; accepted: a "
                            "class name or number")
    return str(label).strip()


def _read_csv(path, cfg) -> list:
    """(text, label) rows of one CSV file; encoding problems and ragged rows are one-line errors."""
    try:
        # utf-8-sig: Excel writes "UTF-8 CSV" with a byte-order mark, which would glue itself to the first column
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            for column in _columns(cfg):
                if getattr(cfg, column) not in (reader.fieldnames or []):
                    raise AdvbenchError(f"dataset.{column}={getattr(cfg, column)!r} is not a column of {path}: "
                                        f"it has {reader.fieldnames}")
            rows = []
            for row in reader:
                if None in row or None in row.values():  # csv's marks of too many and too few fields
                    fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, []))
                    raise AdvbenchError(f"{path}, line {reader.line_num}: {fields} fields "
                                        f"where the header has {len(reader.fieldnames)}: expected one value per "
                                        "column (quote texts holding commas)")
                where = f"{path}, line {reader.line_num}"
                rows.append((_text_of(row, cfg, where), _label_of(row, cfg, where)))
            return rows
    except UnicodeDecodeError as err:
        raise AdvbenchError(f"{path} is not UTF-8 text (byte {err.start}): expected a UTF-8 CSV file; "
                            "convert it, e.g. with iconv -t utf-8") from None
    except csv.Error as err:
        raise AdvbenchError(f"{path} is not a readable CSV file: {err}") from None


def _label_order(labels) -> list:
    """Label names sorted as numbers when they all are ("2" before "10"), else as text."""
    by_text = sorted(labels)  # first, so that labels of one value ("1", "1.0") or "nan" keep one order every run
    try:
        return sorted(by_text, key=float)
    except ValueError:
        return by_text


def _labelled_files(cfg, keys: tuple, read, kind: str):
    """(train, test, label names) of the user's two files named by ``keys``, each read by ``read``."""
    splits = []
    for key in keys:
        path = getattr(cfg, key)
        if not path or not Path(path).is_file():
            raise AdvbenchError(f"dataset.{key}={path}: no such {kind} file")
        rows = read(path, cfg)
        if not rows:
            raise AdvbenchError(f"dataset.{key}={path}: the {kind} file holds no examples")
        splits.append(rows)
    random.Random(cfg.split_seed).shuffle(splits[1])  # a file sorted by label: the first eval.n_examples of all
    names = _label_order({label for _, label in splits[0]})
    index = {name: i for i, name in enumerate(names)}
    unknown = {label for _, label in splits[1]} - set(names)
    if unknown:
        raise AdvbenchError(f"dataset.{keys[1]} has labels absent from the training file: "
                            f"{str(sorted(unknown)[:5])[:200]}")
    return (*(([t for t, _ in rows], [index[label] for _, label in rows]) for rows in splits), names)


def text_csv(cfg):
    """The user's train and test CSV files, with the text and label columns the config names."""
    return _labelled_files(cfg, ("train_csv", "test_csv"), _read_csv, "CSV")


def _read_jsonl(path, cfg) -> list:
    """(text, label) rows of a JSON lines file (one object per line); a bad line is a one-line error naming it."""
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}, line {number}"
                try:
                    item = json.loads(line)
                    rows.append((_text_of(item, cfg, where), _label_of(item, cfg, where)))
                except (ValueError, TypeError, RecursionError) as err:
                    raise AdvbenchError(f"{path}, line {number}: not a JSON object ({type(err).__name__})") from None
                except KeyError as err:
                    named = ", ".join(f"dataset.{c}={getattr(cfg, c)!r}" for c in _columns(cfg))
                    raise AdvbenchError(f"{path}, line {number}: no {err.args[0]!r} key ({named})") from None
    except UnicodeDecodeError as err:
        raise AdvbenchError(f"{path} is not UTF-8 text (byte {err.start})") from None
    return rows


def text_json(cfg):
    """The user's train and test JSON lines files (dataset.train_json, test_json), one {text, label} per line."""
    return _labelled_files(cfg, ("train_json", "test_json"), _read_jsonl, "JSON lines")


def synthetic_text(cfg):
    """A learnable text task for tests: each class has its own keywords among shared filler words."""
    rng = random.Random(1234)
    filler = [f"w{i}" for i in range(50)]
    keywords = [[f"k{c}x{i}" for i in range(5)] for c in range(cfg.n_classes)]

    def sample(n):
        labels = [i % cfg.n_classes for i in range(n)]
        texts = [" ".join(rng.choice(filler if rng.random() < 0.7 else keywords[c]) for _ in range(12))
                 for c in labels]
        return texts, labels

    return sample(cfg.n_train), sample(cfg.n_test), None


# texts and labels before encoding (python -m advbench.tasks.text.tiny_bert trains its tokenizer on them)
RAW = {"fortunes": fortunes, "text_csv": text_csv, "text_json": text_json, "synthetic_text": synthetic_text}


def encoded(loader):
    """``loader`` (texts and labels) turned into padded token ids, with a vocabulary built from the training
    texts alone, or the model's tokenizer (dataset.tokenizer)."""
    def load(cfg):
        train, test, classes = loader(cfg)
        if cfg.tokenizer:  # a Hugging Face model's own tokenizer (model=hf)
            vocab, special, encode_with = hf_encoder(cfg.tokenizer, cfg.max_len)
        else:
            vocab = build_vocab(train[0], cfg.max_vocab, cfg.min_freq)
            special = special_ids(vocab)
            encode_with = lambda texts: encode(texts, vocab, cfg.max_len)  # noqa: E731
        as_ids = [(encode_with(texts), torch.tensor(labels, dtype=torch.int64)) for texts, labels in (train, test)]
        return Source(as_ids[0], as_ids[1], classes, vocab, special=special)
    return load
