"""Every configuration key, declared once with its default and meaning.

Config files in ``configs/`` start from `base_config()` and override values;
they never add keys, so an unknown key on the command line
(``--config.rl.panw.alfa=0.8``) is an error naming the key. Shapes that jitted
programs depend on (image size, scales, text length) live here, so one config
fixes every static shape.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Pixels of a generated image (height, width) and the scale schedule: token
  # grids (h_s, w_s) coarse to fine (an int means a square grid); the last
  # grid is image_size / tokenizer.downsample.
  c.image_size = (32, 128)
  c.scales = ((1, 4), (2, 8), (4, 16), (6, 24), (8, 32))

  # Multi-scale residual VQ-VAE (varrl_jax/models/tokenizer.py).
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.downsample = 4  # pixels per latent cell; = 2 ** (len(channels) - 1)
  c.tokenizer.channels = (64, 128, 128)  # conv width at each resolution level
  c.tokenizer.num_res_blocks = 1
  c.tokenizer.latent_dim = 32  # C: codebook vector width
  c.tokenizer.codebook_size = 1024  # V: shared by all scales
  c.tokenizer.phi_count = 0  # phi refiners shared by depth; 0 = one per scale
  c.tokenizer.phi_ratio = 0.5  # rho in phi(x) = (1 - rho) x + rho conv(x)
  c.tokenizer.beta = 0.25  # commitment weight
  c.tokenizer.dtype = 'float32'

  # Next-scale transformer (varrl_jax/models/transformer.py).
  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 4
  c.model.d_model = 256
  c.model.num_heads = 4
  c.model.num_kv_heads = 2  # grouped-query attention: heads share kv heads
  c.model.head_dim = 0  # 0 = d_model // num_heads
  c.model.mlp_dim = 768  # SwiGLU hidden width
  c.model.text_len = 96  # static prompt length in byte tokens (BOS/EOS incl.)
  c.model.dtype = 'float32'  # activations; 'bfloat16' on TPU
  c.model.param_dtype = 'float32'
  c.model.remat = 'none'  # 'none' | 'full' | 'dots' (rematerialise blocks)
  c.model.attention = 'plain'

  # Rollouts and the policy distribution (varrl_jax/sampling.py, policy.py).
  c.sampling = ml_collections.ConfigDict()
  c.sampling.cfg_scale = 1.0  # w in l_u + w (l_c - l_u); 1 = no guidance
  c.sampling.cfg_schedule = 'constant'  # 'constant' | 'linear' ramp over scales
  c.sampling.temperature = 1.0  # 0 = greedy
  c.sampling.top_k = 0  # 0 = off
  c.sampling.top_p = 1.0  # 1 = off
  c.sampling.policy = 'cfg'  # 'cfg' (guided logits) | 'cond' for log-probs
  c.sampling.batch_size = 8
  return c
