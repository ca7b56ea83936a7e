"""Evaluation: per-example flags under a cascade of attacks, the final evaluation's files, sanity checks,
robustness curves, saliency maps and figures."""
from advbench.evaluation.evaluator import Evaluator
from advbench.evaluation.final import final_evaluation, save_flags
from advbench.evaluation.plan import EvalPlan, validation_attack

__all__ = ["EvalPlan", "Evaluator", "final_evaluation", "save_flags", "validation_attack"]
