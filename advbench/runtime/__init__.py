"""The run's plumbing: checkpoints, atomic outputs, run directories, Hydra callbacks, DDP, autocast."""
