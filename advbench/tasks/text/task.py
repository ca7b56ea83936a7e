"""Text classification: token ids in, logits out; attacks perturb the embedding output (Miyato et al. 2017)."""
import torch
import torch.nn as nn

from advbench.errors import AdvbenchError
from advbench.runtime.distributed import bare
from advbench.tasks import records
from advbench.tasks.classification.task import Classification


class Labels(records.Records):
    """Per text (see tasks/records.py): the true and predicted labels; its worst case is the first wrong
    prediction an attack found (macro F1 needs which wrong class, not only that it is wrong)."""

    def predictions(self, outputs) -> list:
        return outputs.argmax(1).tolist()

    def truths(self, targets) -> list:
        return targets.tolist()

    def rank(self, pred, gt) -> int:
        return int(pred == gt)


def macro_f1(pred: list, truth: list, n_classes: int) -> float:
    """The mean F1 over the classes that occur in ``truth`` or ``pred`` (scikit-learn's and torchmetrics' macro)."""
    from torchmetrics.functional.classification import multiclass_f1_score
    return multiclass_f1_score(torch.tensor(pred), torch.tensor(truth), n_classes, average="macro").item()


class FromEmbeddings(nn.Module):
    """A text model seen from its embedding output; positions ``pinned`` (if given) keep their ``clean``
    embeddings whatever the attack proposes: padding stays zero, special tokens stay themselves."""

    def __init__(self, model: nn.Module, pinned: torch.Tensor | None = None, clean: torch.Tensor | None = None):
        super().__init__()
        self.model, self.pinned, self.clean = model, pinned, clean

    def hold(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb`` with the pinned positions put back."""
        return emb if self.pinned is None else torch.where(self.pinned[..., None], self.clean, emb)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.model.classify(self.hold(emb))


class TextClassification(Classification):
    """Classification of token ids (0 = padding) by a model with ``embedding`` and ``classify(embeddings)``.

    Token ids cannot be perturbed, so an attack's point is the embedding output, with no [0,1] box; padded
    positions stay exactly zero and special tokens ([CLS], [SEP], advbench's <sep>: ``special``) stay unmoved.
    """

    name = "text classification"
    modes = ("standard", "mixed", "freelb", "smart")
    models = ("textcnn", "transformer", "hf")
    perturbs = "embedding"
    evaluates_with_training_attack = True
    # The one-step training attack (FGM) is a weak evaluation: it also runs as PGD-10 from the clean embeddings,
    # on the texts that survived it (cascade), so this costs at most ten more passes over the survivors.
    own_attack_steps = 10
    draws_examples = False
    # Batches vary in length and attacks run through ``embedding`` and ``classify``: compile=auto leaves it eager.
    pads_batches = False

    def __init__(self, n_classes: int = 0, classes: list | None = None, vocab: list | None = None,
                 special: tuple = ()):
        super().__init__(n_classes, classes)
        self.vocab, self.special = vocab, tuple(special)
        self._special_on = {}  # device -> the special ids there: copied once, not at every attack (a GPU sync)

    @classmethod
    def configured(cls, evaluation=None) -> "TextClassification":
        """eval.own_attack_steps: the steps of the multi-step evaluation attack (null: 10; 0: none)."""
        task = cls()
        steps = None if evaluation is None else evaluation.get("own_attack_steps")
        if steps is not None:
            if int(steps) < 0:
                raise AdvbenchError(f"eval.own_attack_steps={steps}: expected a number of steps >= 0 (0: only the "
                                    "run's own attack), or null (10)")
            task.own_attack_steps = int(steps)
        return task

    def bind(self, data) -> "TextClassification":
        """The classes, and the vocabulary and special ids the saliency maps and pinned positions read."""
        super().bind(data)
        self.vocab, self.special, self._special_on = data.vocab, tuple(data.special), {}
        return self

    def new_records(self, attacks: list, n: int, cascade: bool = True) -> Labels:
        """Each text's predicted labels, clean and worst, for macro F1."""
        return Labels(attacks, n, cascade)

    def summarize(self, flags: dict, records: Labels | None = None) -> dict:
        """Classification's accuracies plus macro F1 (for imbalanced sets), clean and at each text's worst case."""
        found = super().summarize(flags)
        if records is not None:
            # Classes unknown (a task made in Python, never bound): the labels seen suffice, as macro F1 averages
            # over the classes that occur.
            seen = records.gt + records.clean + records.worst + [p for after in records.after.values() for p in after]
            n = self.n_classes or max(2, 1 + max(seen, default=0))
            f1 = lambda pred: macro_f1(pred, records.gt, n)  # noqa: E731
            found |= {"clean_macro_f1": f1(records.clean),
                      "robust_macro_f1": f1(records.worst) if records.after else None,
                      "robust_macro_f1_by_attack": {name: f1(pred) for name, pred in records.after.items()}}
        return found

    def trim(self, ids: torch.Tensor) -> torch.Tensor:
        """Dynamic padding: the batch cut after its longest text (texts are right-padded, and padding changes no
        model's output, so this only saves the padded positions' compute)."""
        used = (ids != 0).any(0).nonzero()
        return ids[:, :int(used.max()) + 1] if len(used) else ids[:, :1]

    def pinned(self, ids: torch.Tensor) -> torch.Tensor:
        """Per token: never perturbed (padding and special tokens)."""
        pinned = ids == 0
        if self.special:
            if ids.device not in self._special_on:
                self._special_on[ids.device] = torch.tensor(self.special, device=ids.device)
            pinned |= torch.isin(ids.abs(), self._special_on[ids.device])
        return pinned

    def write_saliency(self, model, test, attack, mode, settings, device, out) -> tuple:
        """job=saliency: each token's gradient norm, as saliency.html and saliency_text.png."""
        from advbench.tasks.text.saliency import write_text_saliency
        return write_text_saliency(model, test, self, self.vocab, settings.n_examples, device, out)

    def view(self, model, ids):
        """(the model from its embeddings, padding and special tokens pinned; the clean embeddings, constant).

        Built outside the caller's ``torch.inference_mode()``: the attack's forwards save them for autograd."""
        with torch.inference_mode(False), torch.no_grad():
            emb = model.embedding(ids)
            return FromEmbeddings(model, self.pinned(ids), emb), emb

    def finish(self, view_model, x_adv):
        """The attack's result with the pinned positions put back."""
        return view_model.hold(x_adv)

    def forward_perturbed(self, model, ids, emb_adv):
        """Logits at the adversarial embeddings, with the embedding layer in the graph: its gradient flows
        through the clean embeddings, the perturbation being a constant of the update."""
        net = bare(model)
        emb = net.embedding(ids)
        return net.classify(emb + (emb_adv - emb).detach())

    def forward_pair(self, model, ids, emb_adv):
        """Clean logits (the full model) and adversarial logits (from the embeddings)."""
        return model(ids), self.forward_perturbed(model, ids, emb_adv)
