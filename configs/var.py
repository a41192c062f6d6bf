r"""The official FoundationVision/VAR class-conditional models, depth as argument.

``--config=configs/var.py:16`` (or 20, 24, 30: 256x256, patch grids
1,2,3,4,5,6,8,10,13,16) and ``:36`` (VAR-d36-s: 512x512, grids
1,2,3,4,6,9,13,18,24,32, shared AdaLN). Width 64 d, d heads, MLP 4x, 1000
classes (+ the null class of CFG); the VQ-VAE ``vae_ch160v4096z32.pth``
(ch 160 x (1,1,2,2,4), 2 res blocks, Cvae 32, V 4096, 4 shared phi at 0.5).
Sampling: the official demo's CFG 4 on their linear ramp, top-k 900, top-p
0.95. Convert the public weights once, then sample or train:

  python -m varrl_jax.convert --family=var --vae=vae_ch160v4096z32.pth \
      --transformer=var_d16.pth --out=ckpt/var_d16
  python -m varrl_jax.sample --config=configs/var.py:16 \
      --config.init_checkpoint=ckpt/var_d16 --prompt=207 --ocr=none
  python -m varrl_jax.train --config=configs/var.py:16 \
      --config.init_checkpoint=ckpt/var_d16 --workdir=workdir/var_d16
  python -m varrl_jax.models.summary --config=configs/var.py:16

RL prompts are class ids (``config.rl.prompts='classes:all'``, a list or
``classes:@FILE``); the default reward is JPEG compressibility (DDPO's task:
it measures file size, nothing about the class), since class-conditional
images have no text for the OCR reward. The rest is the paper's method at
its settings scaled to 10 scales: split after the 8x8 grid (m128, 7 of 10
scales), K = 2, alpha 0.6, 3:1.
"""

from varrl_jax.models.var_official import presets


def get_config(arg=None):
  depth = int(arg) if arg else 16
  if depth < 1:
    raise ValueError(
      f'configs/var.py:{arg}: the depth must be positive '
      f'({presets.PUBLIC_DEPTHS} are public)'
    )
  config = presets.official_config(depth)
  config.sampling.batch_size = 16
  # The sampler unrolls every layer: the KV cache is then updated in place
  # (d16 on 2 CPU cores: its transformer steps 19.7 -> 14.6 s for 8 images;
  # on a TPU pod --config.model.sample_scan_unroll=0 compiles faster).
  config.model.sample_scan_unroll = -1
  # The GRPO step rematerialises its layers: at d16 a suffix update of 4 x 2
  # rows (x 2 with CFG) needs ~26 GB of temporaries without (XLA:CPU), 3.4 GB
  # per 4 rows with. With HBM to spare, 'none' saves the recomputation.
  config.model.remat = 'full'

  # Class ids as prompts and a reward that needs no text (see the docstring).
  config.rl.prompts = 'classes:all'
  config.rl.rewards = 'jpeg_compressibility'
  config.rl.mode = 'full'
  config.rl.prompts_per_update = 4
  config.rl.group_size = 4
  config.rl.rollout_chunks = 1
  # After the 7th scale (8x8 at 256^2, m128; 13x13 at 512^2): 2/3 of the
  # scales, as the paper's m256 is 12 of NextFlow's 18.
  config.rl.vmr.m = '6'
  config.rl.vmr.num_branches = 2
  config.rl.panw.alpha = 0.6
  config.rl.lr = 1e-5
  config.eval.num_prompts = 16
  config.eval.batch_size = 8
  return config
