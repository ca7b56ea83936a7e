"""``job=saliency`` for text: each word's gradient norm at its embeddings, as a highlighted HTML page and a PNG.

A Hugging Face tokenizer's word pieces are joined back into words; a word's norm is the L2 norm of its pieces'
gradients together (the gradient at the word's embeddings, as one vector).
"""
import html
import logging

from advbench.evaluation.plots import FONT, figure, plt, save_figure
from advbench.evaluation.saliency import input_gradient
from advbench.runtime.outputs import atomic_write

log = logging.getLogger(__name__)


def token_saliency(model, ids, y, task):
    """Per token: the L2 norm of the loss's gradient at its embedding, (N, L); zero at padding."""
    view, emb = task.view(model, ids)
    objective = task.objective()
    grad = input_gradient(view, emb, lambda outputs: objective(outputs, y))
    return grad.norm(dim=-1).masked_fill(ids == 0, 0)


_STARTS = ("\u0120", "\u2581")  # byte-level BPE's "Ġ" and SentencePiece's "▁" begin a word


def continues_word(vocab: list) -> callable:
    """How this vocabulary marks word pieces: ``fn(piece) -> (continues the previous word, its text)``.
    WordPiece marks a continuation (``##ing``); BPE and SentencePiece mark a word's start instead."""
    if sum(t.startswith(_STARTS) for t in vocab) > sum(t.startswith("##") for t in vocab):
        return lambda piece: (not piece.startswith(_STARTS), piece.lstrip("".join(_STARTS)))
    return lambda piece: (piece.startswith("##"), piece[2:] if piece.startswith("##") else piece)


def join_pieces(pieces: list, norms: list, special: list, continues) -> tuple:
    """(words, norms): pieces joined into words by ``continues`` (see ``continues_word``); a special token
    ([CLS], <s>, [SEP]) is a word of its own and never continues one. A word's norm: its pieces' norms, L2."""
    words, squares, after_special = [], [], True
    for piece, norm, is_special in zip(pieces, norms, special):
        joins, text = continues(piece)
        if joins and not is_special and not after_special and words:
            words[-1] += text
            squares[-1] += norm ** 2
        else:
            words.append(piece if is_special else text)
            squares.append(norm ** 2)
        after_special = is_special
    return words, [q ** 0.5 for q in squares]


def class_name(classes: list) -> callable:
    """``fn(label) -> its class name`` (the label as a number where the data set names no classes)."""
    return lambda c: str(classes[c]) if classes and 0 <= c < len(classes) else str(c)


def write_text_saliency(model, test: tuple, task, vocab: list, n_examples: int, device, out) -> tuple:
    """saliency.html (tokens highlighted by gradient norm) and saliency_text.png for the first N test texts."""
    ids, y = test[0][:n_examples].to(device), task.to(test[1][:n_examples], device)
    norms, pred = token_saliency(model, ids, y, task).cpu(), task.labels(task.predict(model, ids))
    special, continues, rows = task.pinned(ids).cpu(), continues_word(vocab), []
    name = class_name(task.classes)
    for i in range(len(y)):
        length = int((ids[i] != 0).sum())
        pieces = [vocab[t] for t in ids[i, :length].abs().tolist()]  # a pair's second segment is stored negative
        words, word_norms = join_pieces(pieces, norms[i, :length].tolist(), special[i, :length].tolist(), continues)
        top = max(max(word_norms, default=0.0), 1e-12)
        rows.append((words, [w / top for w in word_norms], name(y[i].item()), name(pred[i])))
    spans = ["<p><b>y={} pred={}</b>: {}</p>".format(html.escape(label), html.escape(p), " ".join(
        f'<span style="background: rgba(255, 80, 0, {w:.2f})" title="{w:.2f}">{html.escape(t)}</span>'
        for t, w in zip(tokens, weights))) for tokens, weights, label, p in rows]
    page = ("<!doctype html><meta charset='utf-8'><title>advbench token saliency</title>"
            "<p>Word colour: the norm of the loss gradient at the word's embeddings (its word pieces' together), "
            "per text scaled to its largest.</p>\n" + "\n".join(spans) + "\n")
    atomic_write(out / "saliency.html", lambda f: f.write(page.encode()))
    # Tokens left to right, horizontal and readable, each on a box shaded by its gradient norm; a row per text.
    chars = max(sum(len(t) + 1 for t in tokens) for tokens, *_ in rows) or 1
    width = min(24, max(6, 0.09 * chars))  # inches: about 0.09 per monospace character
    fig, axes = figure(len(rows), 1, figsize=(width, 0.6 * len(rows) + 0.6), squeeze=False)
    fig.suptitle("Word shade: the loss gradient's norm at the word's embeddings, per text scaled to its largest",
                 fontsize=FONT)
    shade = plt.get_cmap("Oranges")
    for ax, (tokens, weights, label, p) in zip(axes[:, 0], rows):
        ax.set(xlim=(0, max(chars, width / 0.09)), ylim=(0, 1))  # short texts keep their words together
        position = 0
        for token, weight in zip(tokens, weights):
            ax.text(position, 0.45, token, fontsize=8, va="center", family="monospace",
                    bbox={"facecolor": shade(0.85 * weight), "edgecolor": "none", "pad": 1.5})
            position += len(token) + 1
        ax.set_title(f"true: {label}, predicted: {p}", fontsize=7, loc="left", color="black" if label == p else "red")
        ax.axis("off")
    save_figure(fig, out / "saliency_text.png")
    log.info("token saliency of %d test texts in %s", len(rows), out)
    return ["saliency.html", "saliency_text.png"], {"token gradient norm": norms.mean().item()}
