r"""FoundationVision Infinity-8B (text-to-image, bitwise next-scale) with the
paper's text-rendering RL: ``configs/cvtg.py:infinity_8b``, plus sizes.

``--config=configs/infinity_8b.py`` is 1024x1024 (their pn '1M': 13 scales
1..64, 10,521 tokens) for ``infinity_8b_weights``; ``:512`` (pn '0.25M', 10
scales 1..32) is the one for their ``infinity_8b_512x512_weights``; ``:256``
uses pn '0.06M' (7 scales 1..16). Transformer: depth 40, width 3584, 28
heads, 56-bit tokens (the 2x2 spatial patchify: a token holds 4 VAE cells of
14 bits); BSQ VAE infinity_vae_d56_f8_14_patchify.pth (d 14, ch 128 x (1, 2,
4, 4), stride 8); text: a frozen Flan-T5-XL (2048 wide, 512 tokens).
Sampling as their ``scripts/infer.sh``: CFG 4 constant on the logits, tau
0.5, top-k 900 (no-op: 2 classes per bit), top-p 0.97 (their 8B notebook
uses CFG 3, tau 1: ``--config.sampling.cfg_scale=3
--config.sampling.temperature=1``). RL, mesh and precision: see
configs/cvtg.py (splash attention is TPU-only: elsewhere add
``--config.model.attention=plain``).

From the public files to a first RL update (``weights/`` as their README
downloads it: the transformer is a folder of safetensors shards and its
``model.safetensors.index.json``; the T5 folder is recorded in the
checkpoint, not copied, and is given again to runs):

  python -m varrl_jax.convert --family=infinity \
      --transformer=weights/infinity_8b_weights \
      --vae=weights/infinity_vae_d56_f8_14_patchify.pth \
      --text_encoder=weights/flan-t5-xl --out=ckpt/infinity_8b
  python -m varrl_jax.models.summary --config=configs/infinity_8b.py
  python -m varrl_jax.aot --config=configs/infinity_8b.py --topology=v5p-128
  python -m varrl_jax.sample --config=configs/infinity_8b.py \
      --config.init_checkpoint=ckpt/infinity_8b \
      --config.model.infinity.text_encoder=weights/flan-t5-xl \
      --prompt='a neon sign that says "OPEN LATE"' --workdir=workdir/sample_8b
  python -m varrl_jax.train --config=configs/infinity_8b.py \
      --config.init_checkpoint=ckpt/infinity_8b \
      --config.model.infinity.text_encoder=weights/flan-t5-xl \
      --config.rl.num_updates=1 --workdir=workdir/infinity_8b
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
  return _cvtg().infinity_config('infinity_8b', arg)
