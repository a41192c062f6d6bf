"""Converters from public checkpoints to our orbax format.

The official VAR and Infinity weights ship as PyTorch files; `torch_io` reads
them with numpy alone so conversion also runs on TPU VMs that have no torch.
"""
