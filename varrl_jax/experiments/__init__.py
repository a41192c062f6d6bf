"""Experiment drivers built on `varrl_jax.train`: the paper's ablation sweeps."""
