"""Which attacks an evaluation runs, at any eps: ``eval.attacks``, or for tasks whose attacks only make sense as
the training recipe defines them (text embeddings), the run's own attack, that attack as a multi-step PGD
(``Task.own_attack_steps``, eval.own_attack_steps) and the entries that set a target."""
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from advbench.attacks.spec import build_attack
from advbench.eps import parse_eps
from advbench.errors import AdvbenchError


def own_attack(task, run_attack, eps):
    """The run's training attack moved to the task's attack space, one restart, at budget ``eps``."""
    if run_attack is None or run_attack.name == "none":
        return None
    spec = OmegaConf.merge(run_attack, {"target": task.perturbs, "restarts": 1})
    return build_attack(spec, eps, task)


def multi_step_attack(task, run_attack, eps):
    """The run's training attack as PGD with the task's ``own_attack_steps`` at the same eps and norm, from the
    clean point (so it refines the one-step attack's direction); None where the run's attack already takes as
    many steps, or the task asks for none."""
    steps = task.own_attack_steps
    if run_attack is None or run_attack.name == "none" or steps < 2:
        return None
    if run_attack.name == "pgd" and int(run_attack.steps) >= steps:
        return None
    norm = "l2" if run_attack.name == "fgm" else "linf" if run_attack.name == "fgsm" else run_attack.norm
    spec = OmegaConf.merge(run_attack, {"name": "pgd", "norm": norm, "steps": steps, "alpha": None,
                                        "random_start": False, "target": task.perturbs, "restarts": 1})
    return build_attack(spec, eps, task)


def validation_attack(task, val_spec, run_attack, eps):
    """The attack of each epoch's validation: ``val.attack``, or the run's own for such tasks."""
    if task.evaluates_with_training_attack:
        return own_attack(task, run_attack, eps)
    if val_spec.name == "none":
        raise AdvbenchError("val.attack.name=none: validation measures robust accuracy (model selection uses "
                            "it); expected an attack: fgsm, pgd, fgm or apgd")
    return build_attack(val_spec, eps, task)


@dataclass
class EvalPlan:
    """What the final evaluation runs: its attacks (at any eps), examples, robustness curve, pictures, sanity."""

    task: object
    specs: dict  # eval.attacks: name -> attack config
    run_attack: object  # the training attack's config
    eps: str
    n_examples: int | None = None
    eps_list: list | None = None
    save_examples: int = 0
    sanity: object = None
    cascade: bool = True
    seed: int = 0  # every evaluation at another eps of the curve starts from it, as the main one did
    subject: str = ""  # "<model> on <data set>": what the evaluation's figures name in their titles
    built: dict = field(default_factory=dict, repr=False)  # eps -> its attacks, built once (by check, or first use)

    def attacks(self, eps=None) -> dict:
        """The evaluation's attacks at budget ``eps`` (the run's eps text unless given), in their order."""
        eps = self.eps if eps is None else eps
        if eps not in self.built:
            self.built[eps] = self._build(eps)
        return dict(self.built[eps])

    def _build(self, eps) -> dict:
        specs = self.specs
        attacks = {}
        if self.task.evaluates_with_training_attack:
            specs = {name: spec for name, spec in specs.items() if spec.target is not None}
            if self.run_attack is not None and self.run_attack.name != "none":
                attacks[f"{self.run_attack.name}_{self.task.perturbs}"] = own_attack(self.task, self.run_attack, eps)
                attacks[f"pgd{self.task.own_attack_steps}_{self.task.perturbs}"] = multi_step_attack(
                    self.task, self.run_attack, eps)
        for name, spec in specs.items():
            try:
                attacks[name] = build_attack(spec, eps, self.task)
            except AdvbenchError as err:  # which entry: a preset's attack may not fit the data's task
                raise AdvbenchError(f"eval.attacks.{name}: {err}") from None
        return {name: a for name, a in attacks.items() if a is not None}

    def record(self) -> dict:
        """What the evaluation ran, for results.json: the attacks by name and, where the task skipped some of the
        preset's (text evaluates with the run's own attack on its embeddings), which and why."""
        ran = list(self.attacks())
        skipped = [name for name in self.specs if name not in ran] if self.task.evaluates_with_training_attack else []
        if not skipped:
            return {"ran": ran}
        also = f" (and it as PGD-{self.task.own_attack_steps})" if self.task.own_attack_steps >= 2 else ""
        why = (f"{self.task.name} evaluates with the run's own attack{also} on the {self.task.perturbs}: the "
               "preset's attacks on [0,1] inputs do not apply")
        why += "" if ran else "; the run's attack is none, so none ran"
        return {"ran": ran, "preset_skipped": {"attacks": skipped, "why": why}}

    def check(self) -> None:
        """Build every attack at every eps, so a bad value stops the run before any work."""
        self.attacks(self.eps)
        for i, eps in enumerate(self.eps_list or []):  # the error names the entry the user wrote
            key = f"eval.eps_list[{i}]"
            parse_eps(eps, key)
            try:
                self.attacks(eps)
            except AdvbenchError as err:
                raise AdvbenchError(f"{key}={eps}: {err}") from None
        if self.save_examples and not self.task.draws_examples:
            raise AdvbenchError(f"eval.save_examples draws images; {self.task.name} has none to draw: use "
                                "job=saliency")

    def curve_eps(self) -> list:
        """``eval.eps_list``, smallest first."""
        return sorted(self.eps_list or [], key=parse_eps)
