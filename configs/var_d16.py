r"""Our own text-prefix family ('varrl') at the size of VAR-d16, random init.

Not the official VAR: that is ``configs/var.py:16`` (family 'var', their
architecture, loads the converted public weights). This config keeps our
architecture at VAR-d16's size for timing and scaling studies:

16 layers, width 1024, 16 heads (no GQA, as VAR), scales 1,2,3,4,5,6,8,10,13,16
with a 16x-downsampling tokenizer and a 4096-entry codebook. VAR-d16 spends
~100M parameters on AdaLN; we have none, so the SwiGLU width (4864) is chosen
to land at the same total. The GPU sampler timings at VAR-d16 size
(docs/performance.md) use it (the official sampler is timed beside ours with
configs/var.py:16):

  python benchmarks/sampling.py --config=configs/var_d16.py
"""

from varrl_jax.config import base_config

SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def get_config(arg=None):
  del arg
  config = base_config()
  config.image_size = (256, 256)
  config.scales = tuple((s, s) for s in SCALES)

  config.tokenizer.downsample = 16
  config.tokenizer.channels = (128, 128, 256, 256, 512)
  config.tokenizer.num_res_blocks = 2
  config.tokenizer.latent_dim = 32
  config.tokenizer.codebook_size = 4096
  config.tokenizer.phi_count = 4

  config.model.num_layers = 16
  config.model.d_model = 1024
  config.model.num_heads = 16
  config.model.num_kv_heads = 16
  config.model.head_dim = 64
  config.model.mlp_dim = 4864
  config.model.text_len = 64
  # The sampler unrolls every layer so the KV cache is updated in place, not
  # copied by a scan at each scale (benchmarks/sampling.py on 2 CPU cores,
  # batch 4: kv_cache_speedup 2.39x -> 2.64x; compile ~15 s; on a TPU pod
  # --config.model.sample_scan_unroll=0 compiles faster).
  config.model.sample_scan_unroll = -1
  config.sampling.cfg_scale = 1.5
  config.sampling.top_k = 900
  config.sampling.top_p = 0.96
  config.sampling.batch_size = 16
  return config
