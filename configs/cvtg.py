r"""Paper settings: a NextFlow-7B-like model at 1024x1024 with 18 scales, TPU pod.

Transformer of Qwen2.5-7B shape (28 layers, width 3584, 28 heads, 4 KV heads,
SwiGLU 18944), 16x-downsampling tokenizer (64x64 latent grid), the 18 scales
1..64 of NextFlow, ~10k image tokens. Rollouts as in the paper: CFG 5,
top-k 2, top-p 0.9.

The codebook size (16384) and the byte-level text length (1024) are our
choices: the paper does not give NextFlow's tokenizer details here.

  python -m varrl_jax.models.summary --config=configs/cvtg.py
"""

from varrl_jax.config import base_config

SCALES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64)


def get_config(arg=None):
  del arg
  config = base_config()
  config.image_size = (1024, 1024)
  config.scales = tuple((s, s) for s in SCALES)

  config.tokenizer.downsample = 16
  config.tokenizer.channels = (128, 128, 256, 256, 512)
  config.tokenizer.num_res_blocks = 2
  config.tokenizer.latent_dim = 32
  config.tokenizer.codebook_size = 16384
  config.tokenizer.phi_count = 4
  config.tokenizer.dtype = 'bfloat16'

  config.model.num_layers = 28
  config.model.d_model = 3584
  config.model.num_heads = 28
  config.model.num_kv_heads = 4
  config.model.head_dim = 128
  config.model.mlp_dim = 18944
  config.model.text_len = 1024
  config.model.dtype = 'bfloat16'
  config.model.param_dtype = 'float32'
  config.model.remat = 'full'

  config.sampling.cfg_scale = 5.0
  config.sampling.top_k = 2
  config.sampling.top_p = 0.9
  config.sampling.temperature = 1.0
  config.sampling.batch_size = 16
  return config
