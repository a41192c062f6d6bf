"""The FoundationVision/VAR family (class-conditional next-scale prediction).

A re-implementation in Flax of the official VAR code's transformer and
multi-scale VQ-VAE, with the state-dict layout of its public checkpoints
(``var_d{16,20,24,30,36}.pth``, ``vae_ch160v4096z32.pth``). Their code is
read and run for parity (``tools/var_reference.py``), never copied.
"""
