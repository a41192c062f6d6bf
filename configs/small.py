r"""The many-scale testbed: tiny's images and tokenizer, eight scales from 1x1.

The paper's method exists for heterogeneous scales (VAR's 1x1 ... 16x16
grids; Infinity's up to 64x64): the tiny model's four scales span 25x in
token count, this schedule spans 100x (1, 2, 4, 12, 16, 36, 64, 100 tokens;
235 per image), so VMR's prefix/suffix split and PANW's per-scale weights
act on the kind of schedule they were built for. Everything else is
`configs/tiny.py`: 40x160 one-word signs, the 8x tokenizer (its four phi
refiners shared by depth over the eight scales, phi_count 4), the 4-layer
d=256 transformer, the same RL settings. It loads the pretrained model
shipped in varrl_jax/assets/small (tiny's tokenizer, a transformer of 3000
steps: 53.5 min on the shared 2-core host; held-out greedy Word Accuracy
0.725, 0.680 with the rollout sampling, 512 prompts; its manifest.json).
Pretraining recipe and figures: docs/pretraining.md, "The many-scale
testbed". The ablations run on it: docs/results.md.
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
  # RL from this stronger model (rollout-sampling WA 0.71 where tiny's was
  # 0.16): after 40 updates, held-out WA (512 prompts, seed 0; 2026-12-05)
  # went 0.711 -> 0.629 for vanilla GRPO at tiny's lr 5e-5 (per-token KL
  # 0.2), -> 0.688 (vanilla) / 0.703 (full) at 2e-5 (KL 0.08 / 0.03), and
  # -> 0.715 / 0.713 at 1e-5 (KL 0.02 / 0.01: the policy hardly moves). The
  # ablations use 2e-5: the components get a policy that moves.
  config.rl.lr = 2e-5
  config.init_checkpoint = SHIPPED_SMALL if os.path.isdir(SHIPPED_SMALL) else ''
  return config
