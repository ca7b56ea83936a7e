"""The Hydra config groups advbench ships (a package, so Hydra finds them in an installed wheel too)."""
