"""The FoundationVision/Infinity family (text-to-image, bitwise next-scale
prediction).

A re-implementation in Flax of the official Infinity code: the multi-scale
BSQ tokenizer (`bsq_vae`, `bsq_quantizer`, `vae_weights`), the scale
schedules (`schedules`) and the transformer, with the state-dict layout of
the public checkpoints. Their code is read and run for parity
(``tools/infinity_vae_reference.py``), never copied.
"""
