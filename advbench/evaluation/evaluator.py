"""Robust evaluation from per-example flags: each attack on the examples still correct, the worst case kept."""
import logging
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from advbench.attacks.rows import row_budget
from advbench.data.loaders import TensorLoader
from advbench.runtime import readable
from advbench.runtime.amp import autocast
from advbench.runtime.compiled import Bucketed
from advbench.runtime.distributed import gather_flags, shard, world


@dataclass
class Outcome:
    """What an evaluation found: per-example flags, the first adversarials if asked, and the task's own records
    (detection keeps each image's predictions, for mAP)."""

    flags: dict
    kept: torch.Tensor | None = None
    records: object = None


log = logging.getLogger(__name__)


class Evaluator:
    """How an evaluation runs: the task that judges outputs, the device, autocast, batch size and cascade; with
    ``progress`` a bar per evaluation (on a terminal) and a log line per attack; with ``compile`` (the resolved
    ``compile`` setting) the attacks run through the model compiled in batch-size buckets."""

    def __init__(self, task, device, amp: str = "off", batch_size: int = 500, cascade: bool = True,
                 progress: bool = False, compile: bool = False):
        self.task, self.device, self.amp = task, torch.device(device), amp
        self.batch_size, self.cascade, self.progress = batch_size, cascade, progress
        self.compile, self._compiled = compile, {}

    def compiled(self, model, *sizes):
        """``model`` compiled, one wrapper per model shared by training and evaluation (so that its graphs are
        built once): in batch-size buckets around ``sizes`` and this evaluator's batch size where the task pads
        batches (runtime/compiled.py), else ``torch.compile`` as it is."""
        if isinstance(model, Bucketed):
            model.add_sizes(sizes)
            return model
        kept = self._compiled.get(id(model))  # the entry holds the model: its id stays its own
        if kept is None:
            runner = (Bucketed(model, (self.batch_size, *sizes)) if self.task.pads_batches
                      else torch.compile(model))
            kept = self._compiled[id(model)] = (model, runner)
        elif isinstance(kept[1], Bucketed):
            kept[1].add_sizes(sizes)
        return kept[1]

    def _rows(self, attack, model, batches, todo) -> int:
        """The examples ``attack`` takes at once: its own ``rows`` where it has one (Square with windowed queries
        takes more than a whole pass's batch), else the batch size."""
        if not hasattr(attack, "rows") or not todo.numel():
            return self.batch_size
        return attack.rows(model, batches.rows(todo[:1])[0].to(self.device), self.batch_size)

    def predict(self, model, x):
        """The model's outputs on ``x`` in eval mode, without grad, under the evaluation's autocast."""
        with autocast(self.device, self.amp):
            return self.task.predict(model, x)

    def evaluate(self, model, x, targets, attacks: dict, cascade: bool | None = None) -> dict:
        """The task's summary (clean and robust numbers, per attack and worst case) of ``model`` on the examples."""
        outcome = self.run(model, x, targets, attacks, cascade=cascade)
        return self.task.summarize(outcome.flags, outcome.records)

    def flags(self, model, x, targets, attacks: dict, keep: int = 0, cascade: bool | None = None):
        """Per-example flags (and the first ``keep`` adversarials): ``run`` without the task's records."""
        outcome = self.run(model, x, targets, attacks, keep, cascade)
        return (outcome.flags, outcome.kept) if keep else outcome.flags

    def run(self, model, x, targets, attacks: dict, keep: int = 0, cascade: bool | None = None,
            report: bool = False) -> Outcome:
        """Per-example flags ``clean`` and, per attack, ``correct after it``; the first ``keep`` adversarials; the
        task's records. Under torchrun each rank attacks its shard and the flags are gathered (every rank must
        call this); a task that keeps records evaluates unsharded on each rank. ``report``: a log line per attack
        (examples attacked, still correct, seconds)."""
        cascade = self.cascade if cascade is None else cascade
        n = self.task.count(targets)
        records = self.task.new_records(list(attacks), n, cascade)
        if world()[1] > 1 and not keep and records is None:
            idx = shard(n)
            local = self.local_flags(model, x[idx], self.task.index(targets, idx), attacks, cascade, report=report)
            return Outcome(gather_flags(local.flags, n))
        return self.local_flags(model, x, targets, attacks, cascade, keep, records, report)

    def local_flags(self, model, x, targets, attacks: dict, cascade: bool, keep: int = 0, records=None,
                    report: bool = False) -> Outcome:
        """``run`` on this process's examples only.

        With ``cascade`` each attack runs only on the examples that survived every attack before it, so its flags
        are cumulative; without, each attack runs on every clean-correct example. Examples wrong already count as
        broken and are never attacked, except where the task keeps records (a metric over the whole split, such as
        mAP): there every attack runs on every example, and the flags are as above. The kept adversarial of an
        example is the one that broke it, if any.
        Each attack takes the examples left across the whole split, packed into full batches, so the work per
        step stays large as examples drop out (batch by batch, the later attacks would see shrinking batches).
        """
        task, n = self.task, self.task.count(targets)
        if self.compile and task.pads_batches:  # an evaluation in one batch compiles that batch's size exactly
            model = self.compiled(model, min(n, self.batch_size))
        bar = tqdm(total=n * (1 + len(attacks)), desc="evaluation", leave=False, unit="ex",
                   disable=not (self.progress and sys.stderr.isatty()))
        batches = TensorLoader(x, targets, self.batch_size, index=task.index, trim=task.trim)
        correct, shown = [], []
        for start, (xb, tb) in zip(range(0, n, self.batch_size), batches):
            xb, tb = xb.to(self.device), task.to(tb, self.device)
            clean = self.predict(model, xb)
            correct.append(task.correct(clean, tb).cpu())
            if records is not None:
                records.add_clean(range(start, start + len(xb)), clean, tb)
            if start < keep:
                shown.append(xb[:keep - start].cpu())
            bar.update(len(xb))
        flags = {"clean": torch.cat(correct)}
        shown = torch.cat(shown) if keep else None
        alive = flags["clean"].clone()
        seconds, attacked = dict.fromkeys(attacks, 0.0), dict.fromkeys(attacks, 0)
        for name, attack in attacks.items():
            began, ok = time.perf_counter(), torch.zeros(n, dtype=torch.bool)
            counted = alive if cascade else flags["clean"]  # the examples this attack's flags can leave correct
            # A metric over the whole split (mAP, mIoU: the task keeps records) counts every example's predictions,
            # those wrong already too, and one attack's worst is not every attack's: each attack runs on them all.
            todo = torch.arange(n) if records is not None else counted.nonzero().squeeze(1)
            size = self._rows(attack, model, batches, todo)
            for idx in todo.split(size) if todo.numel() else ():  # (an empty tensor splits in one)
                xi, ti = batches.rows(idx)
                xi, ti = xi.to(self.device), task.to(ti, self.device)
                with autocast(self.device, self.amp), row_budget(size):
                    x_adv = attack(model, xi, ti)
                    outputs = (attack.outputs(model, xi, x_adv) if hasattr(attack, "outputs")
                               else task.predict(model, x_adv))
                ok[idx] = task.correct(outputs, ti).cpu()
                if records is not None:
                    records.add_attack(idx.tolist(), outputs)
                show = (idx < keep) & alive[idx]  # examples not broken before: show this attack's attempt
                if show.any():
                    shown[idx[show]] = x_adv[show.to(x_adv.device)].cpu().to(shown.dtype)
                bar.update(len(idx))
            if records is not None:
                records.close(name, range(n))
            ok &= counted
            alive &= ok
            flags[name] = ok
            seconds[name], attacked[name] = time.perf_counter() - began, todo.numel()
            bar.update(n - todo.numel())
            bar.set_postfix_str(f"{name}: {int(alive.sum())}/{n} left")
        bar.close()
        if report:
            for name in attacks:
                still = int(flags[name].sum())
                log.info("%s: %d examples attacked, %d of %d still correct (%.2f%%), %s", name,
                         attacked[name], still, n, 100 * still / max(n, 1), readable.number("seconds", seconds[name]))
        return Outcome(flags, shown, records)
