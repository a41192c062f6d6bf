"""Supervised pretraining of the tiny model: tokenizer stage, then transformer stage.

  python -m varrl_jax.pretrain --config=configs/tiny.py --stage=tokenizer --workdir=W
  python -m varrl_jax.pretrain --config=configs/tiny.py --stage=transformer --workdir=W

Each stage writes to ``W/<stage>/``: ``metrics.jsonl`` and TensorBoard events,
``grids/`` (tokenizer: reconstructions scale by scale; transformer: samples
for held-out prompts), ``checkpoints/step_*`` (periodic) and
``checkpoints/final``. ``W/transformer/checkpoints/final`` holds the tokenizer
and the transformer: it is what ``config.init_checkpoint`` points at.
Hyper-parameters: ``config.pretrain`` (varrl_jax/config.py).
"""

from varrl_jax.pretrain import loop, tokenizer_stage, transformer_stage
from varrl_jax.pretrain.loop import Diverged

STAGES = {'tokenizer': tokenizer_stage.train, 'transformer': transformer_stage.train}

__all__ = ['STAGES', 'Diverged', 'loop', 'tokenizer_stage', 'transformer_stage']
