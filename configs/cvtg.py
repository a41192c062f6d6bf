r"""Paper settings: a NextFlow-7B-like model at 1024x1024 with 18 scales, TPU pod.

Transformer of Qwen2.5-7B shape (28 layers, width 3584, 28 heads, 4 KV heads,
SwiGLU 18944), 16x-downsampling tokenizer (64x64 latent grid), the 18 scales
1..64 of NextFlow, ~10k image tokens. Rollouts as in the paper: CFG 5,
top-k 2, top-p 0.9.

The codebook size (16384) and the byte-level text length (1024) are our
choices: the paper does not give NextFlow's tokenizer details here.

RL prompts: 20,000 generated multi-region text-rendering prompts (2-5
quoted texts each, shaped like CVTG-2K's but from our own templates and
words), built in-process: the list that ``python -m
varrl_jax.data.make_prompts --n=20000 --regions=2..5 --out=prompts.jsonl``
writes (add ``--cvtg=ROOT`` to check it against a CVTG-2K copy). Train on
a file instead with ``--config.rl.prompts=jsonl:prompts.jsonl``.

  python -m varrl_jax.models.summary --config=configs/cvtg.py
  python -m varrl_jax.aot --config=configs/cvtg.py --topology=v5p-128
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
  # ~11k tokens: plain attention's [T, T] scores need ~1 TB per chip; the
  # Pallas splash kernel (TPU only) fits. FSDP over every chip: the paper's
  # 256 x 11,108-token update (512 rows with the CFG branch) compiles to
  # 64.0 of 95 GiB per v5p chip on v5p-128 (python -m varrl_jax.aot, README).
  config.model.attention = 'splash'
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.tensor = 1

  config.sampling.cfg_scale = 5.0
  config.sampling.top_k = 2
  config.sampling.top_p = 0.9
  config.sampling.temperature = 1.0
  config.sampling.batch_size = 16
  # Evaluation batches split over data x fsdp: 64 rows, one per v5p-128 chip
  # (16 does not divide over 64 chips; rl.batch_check refuses it).
  config.eval.batch_size = 64

  # The paper's RL settings (Tables 3-5): 16 prompts x G = 16 per update, split
  # m256 (after the 16x16 grid: 12 of 18 scales), K = 2, eta = 1, alpha = 0.6,
  # 3:1 prefix:suffix, AdamW lr 1e-5 (0.9, 0.95), wd 0.05. eps and beta are
  # not given in the paper: 0.2 and 0.04.
  config.rl.mode = 'full'
  config.rl.prompts = 'generated:n=20000,regions=2..5,seed=0'
  # 256 of them held out (never trained on) for the before/after evaluation.
  config.rl.heldout_prompts = 256
  config.rl.prompts_per_update = 16
  config.rl.group_size = 16
  config.rl.rollout_chunks = 4
  config.rl.vmr.m = 'm256'
  config.rl.vmr.num_branches = 2
  config.rl.vmr.eta = 1.0
  config.rl.vmr.prefix_updates = 3
  config.rl.vmr.suffix_updates = 1
  config.rl.panw.alpha = 0.6
  config.rl.lr = 1e-5
  config.rl.b1, config.rl.b2 = 0.9, 0.95
  config.rl.weight_decay = 0.05
  config.rl.clip_eps = 0.2
  config.rl.kl_beta = 0.04
  config.ocr.num_workers = 8
  # The 18-scale sampler and the GRPO step take minutes to compile (565 s
  # and 78 s on a v5p-128 AOT build): a resumed job reuses them from here.
  config.compilation_cache_dir = '~/.cache/varrl_jax/jax'
  return config
