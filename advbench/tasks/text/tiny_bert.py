"""A tiny BERT built offline (random weights, a WordPiece tokenizer trained on a data set's training texts), saved
as a Hugging Face model directory: what the tests and the CPU-sized text experiments fine-tune, with no download.

    python -m advbench.tasks.text.tiny_bert data/tiny_bert_fortunes            # trained on dataset=fortunes' texts
"""
import argparse
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def build_tiny_bert(path, texts: list, n_labels: int, vocab_size: int = 2000, hidden: int = 64, layers: int = 2,
                    heads: int = 2, max_len: int = 128, seed: int = 0) -> Path:
    """Train a WordPiece tokenizer on ``texts``, build a BERT of ``layers`` x ``hidden`` with random weights (seeded)
    and save both to ``path``; returns the path."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    path = Path(path)
    transformers.BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]").save_pretrained(path)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=4 * hidden,
                                     max_position_embeddings=max_len, num_labels=n_labels)
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    return path


def main(argv=None) -> None:
    """Build a tiny BERT on a text data set's training texts (dataset=fortunes by default)."""
    from hydra import compose, initialize_config_module

    from advbench.config import register_configs
    from advbench.tasks.text.data import RAW
    from advbench.tasks.text.tokens import segments
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--dataset", default="fortunes", help="a text data set option (fortunes, text_csv, ...)")
    parser.add_argument("overrides", nargs="*", help="dataset.* overrides, e.g. dataset.train_csv=...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_configs()
    with initialize_config_module("advbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={args.dataset}", *args.overrides])
    (texts, labels), _, classes = RAW[cfg.dataset.name](cfg.dataset)  # texts, before any encoding
    parts = [part for text in texts for part in segments(text)]  # both sentences of pairs
    build_tiny_bert(args.path, parts, len(classes) if classes else max(labels) + 1)
    log.info("tiny BERT for dataset=%s in %s", args.dataset, args.path)


if __name__ == "__main__":
    main()
