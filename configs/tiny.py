r"""The embedded default: a few-million-parameter model that runs on one CPU.

32x128 sign-like images, a 4x-downsampling tokenizer (8x32 latent grid), five
scales, a 4-layer d=256 transformer.

  python -m varrl_jax.sample --config=configs/tiny.py
"""

from varrl_jax.config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.sampling.batch_size = 8
  return config
