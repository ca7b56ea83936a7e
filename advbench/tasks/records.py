"""Per-example records of an evaluation whose metric does not split over examples (mAP, mIoU): each example's
ground truth, clean prediction and worst prediction so far, and after each attack the predictions its own number
is computed from. A task subclasses ``Records`` with how to read its outputs and how bad a prediction is."""


class Records:
    """Per example: the truth, the clean prediction, the worst prediction so far (the lowest ``rank``); after each
    attack, its predictions for the per-attack numbers: the worst case so far under the cascade (cumulative, as
    classification's), the attack's own otherwise (clean where it did not attack)."""

    def __init__(self, attacks: list, n: int, cascade: bool = True):
        self.cascade = cascade
        self.gt, self.clean, self.worst = [None] * n, [None] * n, [None] * n
        self.worst_rank = [None] * n
        self.after = {name: [None] * n for name in attacks}
        self.own = {}

    def predictions(self, outputs) -> list:
        """The per-example predictions a batch's outputs hold, as the records keep them."""
        raise NotImplementedError

    def truths(self, targets) -> list:
        """The per-example targets of a batch, as the records keep them."""
        raise NotImplementedError

    def rank(self, pred, gt):
        """How well ``pred`` does on ``gt``: lower is worse (what the worst case minimizes)."""
        raise NotImplementedError

    def add_clean(self, indices, outputs, targets) -> None:
        """The clean predictions of the examples ``indices``."""
        for i, p, t in zip(indices, self.predictions(outputs), self.truths(targets)):
            self.gt[i], self.clean[i], self.worst[i] = t, p, p
            self.worst_rank[i] = self.rank(p, t)

    def add_attack(self, indices, outputs) -> None:
        """An attack's predictions for the examples it attacked: kept where they are worse than the worst so far."""
        for i, p in zip(indices, self.predictions(outputs)):
            self.own[i] = p
            found = self.rank(p, self.gt[i])
            if found < self.worst_rank[i]:
                self.worst[i], self.worst_rank[i] = p, found

    def close(self, name: str, indices) -> None:
        """Record attack ``name``'s predictions of the examples ``indices`` (see the class docstring)."""
        for i in indices:
            self.after[name][i] = self.worst[i] if self.cascade else self.own.get(i, self.clean[i])
        self.own = {}
