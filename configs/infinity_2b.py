r"""FoundationVision Infinity-2B (text-to-image, bitwise next-scale) with the
paper's text-rendering RL: ``configs/cvtg.py:infinity_2b``, plus sizes.

``--config=configs/infinity_2b.py`` is 1024x1024 (their pn '1M': 13 scales
1..64, 10,521 tokens); ``:512`` and ``:256`` use pn '0.25M' (10 scales
1..32) and '0.06M' (7 scales 1..16) at 512^2 / 256^2 (cheaper rollouts).
Transformer: depth 32, width 2048, 16 heads, 32-bit tokens; BSQ VAE
infinity_vae_d32reg.pth (d 32, ch 128 x (1, 2, 4, 4, 4), stride 16); text: a
frozen Flan-T5-XL (2048 wide, 512 tokens). Sampling as their
``scripts/infer.sh``: CFG 4 constant on the logits, tau 0.5
(``sampling.temperature``), top-k 900 (no-op: 2 classes per bit), top-p
0.97. RL, mesh and precision: see configs/cvtg.py (splash attention is
TPU-only: elsewhere add ``--config.model.attention=plain``).

From the public files to a first RL update (``weights/`` as their README
downloads it; the T5 folder is recorded in the checkpoint, not copied, and
is given again to runs: it is read when prompts are encoded):

  python -m varrl_jax.convert --family=infinity \
      --transformer=weights/infinity_2b_reg.pth \
      --vae=weights/infinity_vae_d32reg.pth \
      --text_encoder=weights/flan-t5-xl --out=ckpt/infinity_2b
  python -m varrl_jax.models.summary --config=configs/infinity_2b.py
  python -m varrl_jax.aot --config=configs/infinity_2b.py --topology=v5p-128
  python -m varrl_jax.sample --config=configs/infinity_2b.py \
      --config.init_checkpoint=ckpt/infinity_2b \
      --config.model.infinity.text_encoder=weights/flan-t5-xl \
      --prompt='a neon sign that says "OPEN LATE"' --workdir=workdir/sample_2b
  python -m varrl_jax.train --config=configs/infinity_2b.py \
      --config.init_checkpoint=ckpt/infinity_2b \
      --config.model.infinity.text_encoder=weights/flan-t5-xl \
      --config.rl.num_updates=1 --workdir=workdir/infinity_2b
"""

import importlib.util
import pathlib


def _cvtg():
  """configs/cvtg.py, the one source of the RL and pod settings."""
  path = pathlib.Path(__file__).with_name('cvtg.py')
  spec = importlib.util.spec_from_file_location('varrl_configs_cvtg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  return _cvtg().infinity_config('infinity_2b', arg)
