"""Texts to token ids: advbench's whitespace-word vocabulary, or a Hugging Face model's own tokenizer.

A text is a string, or a (text, pair) tuple for sentence-pair tasks (GLUE's MNLI, QQP...). Ids are int64, right
padded with 0, which is never a token. A pair's second segment is stored with negative ids (-id): the token type
travels with the token, and a model with segment embeddings reads it from the sign (models/hf.py); the others
take the absolute value (models/text.py).
"""
import re
from collections import Counter
from pathlib import Path

import torch

from advbench.errors import AdvbenchError

PAD, UNK, SEP = "<pad>", "<unk>", "<sep>"
_TOKEN = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list:
    """Lower-case word tokens."""
    return _TOKEN.findall(text.lower())


def segments(text) -> tuple:
    """The one or two segments of a text: a string, or a (text, pair) tuple."""
    return tuple(text) if isinstance(text, (tuple, list)) else (text,)


def build_vocab(texts: list, max_size: int, min_freq: int) -> list:
    """<pad>, <unk> (and <sep> for sentence pairs), then the training split's tokens by frequency (ties
    alphabetical)."""
    counts = Counter(token for text in texts for part in segments(text) for token in tokenize(part))
    special = [PAD, UNK] + ([SEP] if texts and len(segments(texts[0])) == 2 else [])
    ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return [*special, *ranked[:max(0, max_size - len(special))]]


def _truncate_pair(a: list, b: list, budget: int) -> tuple:
    """Drop tokens from the end of the longer segment until both fit ``budget`` (Hugging Face's longest_first)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b


def encode(texts: list, vocab: list, max_len: int) -> torch.Tensor:
    """Token ids, truncated to ``max_len`` and padded with <pad> (id 0); unknown words map to <unk> (id 1). A pair
    is ``text <sep> pair``, the pair's ids negative, truncated longest first."""
    index = {token: i for i, token in enumerate(vocab)}
    ids = torch.zeros(len(texts), max_len, dtype=torch.int64)
    for row, text in enumerate(texts):
        parts = [[index.get(t, 1) for t in tokenize(part)] for part in segments(text)]
        if len(parts) == 2:
            first, second = _truncate_pair(*parts, max_len - 1)
            tokens = first + [index[SEP]] + [-t for t in second]
        else:
            tokens = parts[0][:max_len]
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    return ids


def special_ids(vocab: list) -> list:
    """The stored ids of advbench's own separator, which attacks leave in place."""
    return [vocab.index(SEP)] if SEP in vocab else []


def hf_encoder(path: str, max_len: int, key: str = "dataset.tokenizer") -> tuple:
    """(vocabulary, special ids, encode) of the tokenizer in ``path`` (AutoTokenizer): texts tokenized once,
    truncated to ``max_len`` with the tokenizer's special tokens (pairs longest first). Each id is stored + 1, so
    that 0 stays padding (models/hf.py undoes it), and negated where the token type is 1. The special ids
    ([CLS], [SEP], <s>...; not [UNK], which stands for a word) are positions attacks leave in place."""
    from advbench.models.hf import local_path
    where = local_path(path, key)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise AdvbenchError(f"{key} needs the transformers package: pip install 'advbench[nlp]'") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as err:
        hub = "" if Path(str(path)).expanduser().exists() else "no such folder, and the hub did not give it: "
        raise AdvbenchError(f"{key}={path}: {hub}{' '.join(str(err).split())[:200]}") from None
    vocab = [PAD, *tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]
    special = sorted(i + 1 for i in set(tokenizer.all_special_ids) - {tokenizer.unk_token_id, tokenizer.pad_token_id})

    def encode_with(texts: list) -> torch.Tensor:
        parts = [segments(text) for text in texts]  # all strings, or all pairs
        pairs = [p[1] for p in parts] if parts and len(parts[0]) == 2 else None
        found = tokenizer([p[0] for p in parts], pairs, truncation=True, max_length=max_len, padding="max_length",
                          return_tensors="pt")
        ids = found["input_ids"] + 1
        if "token_type_ids" in found:
            ids = torch.where(found["token_type_ids"] == 1, -ids, ids)
        return torch.where(found["attention_mask"].bool(), ids, 0)
    return vocab, special, encode_with
