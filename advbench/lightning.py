"""Adversarial validation in a Lightning ``Trainer``: ``AdversarialValidation``, a callback.

    trainer = L.Trainer(callbacks=[AdversarialValidation(advbench.attack("pgd", eps="8/255", steps=10))])

It attacks the validation batches as they come (``on_validation_batch_end``), so each is loaded once and the
attack sees what ``validation_step`` saw; the numbers are ``advbench.evaluate``'s on those batches, logged with
``pl_module.log`` as epoch means weighted by batch size (synchronized across processes).
"""
from advbench.errors import AdvbenchError

MISSING = "advbench.lightning needs Lightning: pip install 'advbench[bridge]' (or lightning)"
try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise AdvbenchError(MISSING) from None


class AdversarialValidation(pl.Callback):
    """Every ``every_n_epochs`` epochs of ``fit`` (and at every ``trainer.validate``), the validation batches attacked
    after ``validation_step``: logs ``val_clean_acc`` and ``val_robust_acc`` (the task's two metrics; with several
    attacks, the worst case, and ``val_robust_acc_<name>`` cumulative per attack) on up to ``n_examples`` examples
    per process (None: all).

    ``attack``: an ``advbench.attack(...)``, a dict name -> attack, or an evaluation preset's name built at ``eps``
    (``"pgd20"``, ``"autoattack_fast"``). ``task``: "classification" or "text" (token-id batches, attacks on the
    embeddings); None: the attacks' own. The module's forward returns logits of [0,1] images (or token ids); its
    modes, buffers and gradients are left as they were, and Lightning's inference mode is fine.
    """

    def __init__(self, attack, every_n_epochs: int = 1, n_examples: int | None = None, task=None, eps="8/255",
                 prefix: str = "val_"):
        from advbench.api import _evaluated_task, preset
        from advbench.attacks.spec import Attack
        for key, value, least in (("every_n_epochs", every_n_epochs, 1), ("n_examples", n_examples or 1, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise AdvbenchError(f"AdversarialValidation: {key}={value!r}; expected a positive integer"
                                    + (" or None (all)" if key == "n_examples" else ""))
        attacks = {"robust": attack} if isinstance(attack, Attack) else attack
        if not isinstance(attacks, (dict, str)):
            raise AdvbenchError("AdversarialValidation: attack must be an advbench.attack(...), a dict of them or an "
                                f"evaluation preset's name; {type(attack).__name__} given")
        self.task = _evaluated_task(task, attacks)
        self.attacks = preset(attacks, eps, self.task) if isinstance(attacks, str) else attacks
        self.every_n_epochs, self.n_examples, self.prefix = every_n_epochs, n_examples, prefix
        self.active, self.seen = False, 0

    def due(self, trainer) -> bool:
        """Whether this validation is attacked: every ``trainer.validate``, every n-th epoch of ``fit``, never
        Lightning's sanity check."""
        if trainer.sanity_checking:
            return False
        fitting = str(getattr(trainer.state.fn, "value", trainer.state.fn)) == "fit"
        return not fitting or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.active, self.seen = self.due(trainer), 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from advbench.api import _unpack, evaluate
        if not self.active or (self.n_examples is not None and self.seen >= self.n_examples):
            return
        x, y = _unpack(batch)
        if self.n_examples is not None:
            x, y = x[:self.n_examples - self.seen], y[:self.n_examples - self.seen]
        self.seen += len(y)
        found = evaluate(pl_module, [(x, y)], self.attacks, sanity=False, task=self.task)
        clean_key, robust_key = self.task.metrics
        numbers = {clean_key: found[clean_key], robust_key: found[robust_key]}
        if len(self.attacks) > 1:
            numbers |= {f"{robust_key}_{name}": value for name, value in found[f"{robust_key}_by_attack"].items()}
        for name, value in numbers.items():
            pl_module.log(f"{self.prefix}{name}", float(value), on_step=False, on_epoch=True, batch_size=len(y),
                          sync_dist=True)
