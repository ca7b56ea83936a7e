"""advbench: adversarial training and robustness evaluation, driven by Hydra configs."""
__version__ = "0.1.0"
