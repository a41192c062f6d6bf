r"""The many-scale testbed: tiny's images and tokenizer, eight scales from 1x1.

The paper's method exists for heterogeneous scales (VAR's 1x1 ... 16x16
grids; Infinity's up to 64x64): the tiny model's four scales span 25x in
token count, this schedule spans 100x (1, 2, 4, 12, 16, 36, 64, 100 tokens;
235 per image), so VMR's prefix/suffix split and PANW's per-scale weights
act on the kind of schedule they were built for. Everything else is
`configs/tiny.py`: 40x160 one-word signs, the 8x tokenizer (its four phi
refiners shared by depth over the eight scales, phi_count 4), the 4-layer
d=256 transformer, the same RL settings. Pretraining recipe and figures:
docs/pretraining.md, "The many-scale testbed".
"""

import os

from varrl_jax.cli import load_config_file
from varrl_jax.weights import SHIPPED_SMALL


def get_config(arg=None):
  del arg
  config = load_config_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tiny.py')
  )
  config.scales = ((1, 1), (1, 2), (1, 4), (2, 6), (2, 8), (3, 12), (4, 16), (5, 20))
  # Four refiners shared by depth (scale s uses phi round(s / 7 * 3)), as
  # VAR shares four over ten scales: the same parameter tree as the tiny
  # tokenizer, which the recipe starts from.
  config.tokenizer.phi_count = 4
  # The paper's split m256 of 1024^2 reaches 1/4 of the side (40 of 160 px):
  # scales 2 (1x4, 32 px) and 3 (2x6, 48 px) are equally near; 3 gives the
  # prefix 19 of 235 tokens (8 %) rather than 7.
  config.rl.vmr.m = '3'
  config.init_checkpoint = SHIPPED_SMALL if os.path.isdir(SHIPPED_SMALL) else ''
  return config
