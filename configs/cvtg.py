r"""The paper's text-rendering RL on a TPU pod, the model as argument.

  --config=configs/cvtg.py                  NextFlow-7B-like, random init (default)
  --config=configs/cvtg.py:nextflow_like    the same
  --config=configs/cvtg.py:infinity_2b      FoundationVision Infinity-2B, 1024^2
  --config=configs/cvtg.py:infinity_8b      FoundationVision Infinity-8B, 1024^2

Which to use: ``infinity_2b`` / ``infinity_8b`` to fine-tune real pretrained
weights (convert them first; configs/infinity_2b.py and infinity_8b.py give
the commands and the 512^2 / 256^2 variants; they are these configs).
``nextflow_like`` has the shape of the paper's model (the NextFlow weights
are not public): for memory, compile-time and throughput studies at the
paper's scale (``python -m varrl_jax.aot``), not for image quality.

nextflow_like: a transformer of Qwen2.5-7B shape (28 layers, width 3584, 28
heads, 4 KV heads, SwiGLU 18944), a 16x-downsampling tokenizer (64x64
latent grid), NextFlow's 18 scales 1..64 at 1024x1024, ~10k image tokens;
rollouts as in the paper: CFG 5, top-k 2, top-p 0.9. The codebook size
(16384) and the byte-level text length (1024) are our choices: the paper
does not give NextFlow's tokenizer details.

infinity_*: their architecture and sampler (`models/infinity/presets.py`:
CFG 4 constant, tau 0.5, top-k 900, top-p 0.97), 13 scales 1..64, activations
in bfloat16 with float32 weights.

Either way, the paper's RL (`paper_rl`): 16 prompts x G = 16, VMR split at
a quarter of the image side (m256 at 1024^2), K = 2, PANW alpha 0.6, 3:1,
AdamW lr 1e-5, the OCR reward. RL prompts: 20,000 generated multi-region
text-rendering prompts (2-5 quoted texts each, shaped like CVTG-2K's but
from our own templates and words), built in-process: the list that
``python -m varrl_jax.data.make_prompts --n=20000 --regions=2..5
--out=prompts.jsonl`` writes (add ``--cvtg=ROOT`` to check it against a
CVTG-2K copy); 256 of them held out. Train on a file instead with
``--config.rl.prompts=jsonl:prompts.jsonl``.

  python -m varrl_jax.models.summary --config=configs/cvtg.py
  python -m varrl_jax.aot --config=configs/cvtg.py --topology=v5p-128
  python -m varrl_jax.aot --config=configs/cvtg.py:infinity_2b --topology=v5p-128
"""

from varrl_jax.config import base_config
from varrl_jax.models.infinity import presets as infinity_presets

SCALES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64)
MODELS = ('nextflow_like', 'infinity_2b', 'infinity_8b')
MICROBATCHES = {'infinity_2b': 4, 'infinity_8b': 2}


def nextflow_like():
  """The model of the paper's shape, random init (see the docstring)."""
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
  # Pallas splash kernel (TPU only) fits.
  config.model.attention = 'splash'
  # The largest GRPO step, a suffix update of P G K = 512 sequences of
  # 11,108 tokens (1024 rows with the CFG branch), asks 124 GiB per v5p chip
  # on v5p-128 in one pass; in 2 micro-batches it compiles to 34.6 of 95 GiB
  # (python benchmarks/aot_roofline.py --config=configs/cvtg.py
  # --topology=v5p-128 --programs=train_step, 2026-12-05; docs/tpu.md).
  config.rl.train_microbatches = 2

  config.sampling.cfg_scale = 5.0
  config.sampling.top_k = 2
  config.sampling.top_p = 0.9
  config.sampling.temperature = 1.0
  return config


def infinity(model: str, resolution: int = 1024):
  """Official Infinity ``model`` at ``resolution``^2, for RL on a pod: their
  sampler, bfloat16 activations (float32 weights and optimizer), every layer
  rematerialised, splash attention (10,521 tokens at 1024^2)."""
  config = infinity_presets.official_config(model, resolution)
  # The GRPO step runs micro-batches of P G / M sequences whose gradients add
  # up (a suffix step of P G K = 512 sequences, 1024 rows with the CFG
  # branch, runs K M of them). At 1024^2 the 2B needs M = 4 on v5p-32 (63.7
  # of 95 GiB per chip; a 256-sequence step in one pass asks 136 GiB, with 2
  # micro-batches 120), the 8B M = 2 on v5p-128 (60.4 GiB; 115 GiB in one
  # pass): python -m varrl_jax.aot, docs/infinity.md. Larger slices fit with less
  # (--config.rl.train_microbatches=1 is one pass).
  config.rl.train_microbatches = MICROBATCHES[model] if resolution == 1024 else 1
  config.tokenizer.dtype = 'bfloat16'
  config.model.dtype = 'bfloat16'
  config.model.param_dtype = 'float32'
  config.model.remat = 'full'
  config.model.attention = 'splash'
  return config


def paper_rl(config):
  """The paper's RL settings (Tables 3-5) on ``config``, in place.

  16 prompts x G = 16 per update, split m256 at 1024^2 (after the 16x16
  grid; a quarter of the side at other sizes), K = 2, eta = 1, alpha = 0.6,
  3:1 prefix:suffix, AdamW lr 1e-5 (0.9, 0.95), wd 0.05. eps and beta are not
  given in the paper: 0.2 and 0.04. Pod settings: FSDP over every chip;
  evaluation batches of 64 rows, one per v5p-128 chip (16 does not divide
  over 64 chips; rl.batch_check refuses it).
  """
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.tensor = 1
  config.sampling.batch_size = 16
  config.eval.batch_size = 64

  config.rl.mode = 'full'
  config.rl.rewards = 'ocr'
  config.rl.prompts = 'generated:n=20000,regions=2..5,seed=0'
  # 256 of them held out (never trained on) for the before/after evaluation.
  config.rl.heldout_prompts = 256
  config.rl.prompts_per_update = 16
  config.rl.group_size = 16
  config.rl.rollout_chunks = 4
  config.rl.vmr.m = f'm{config.image_size[0] // 4}'
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
  # OCR workers per host (benchmarks/ocr_pod_budget.py, 2026-12-05: rapidocr
  # 0.32 s, easyocr 6.4 s of CPU per 1024^2 image, one thread). v5p-128 = 16
  # hosts: 512 images / 16 = 32 per host per update, 8 per rollout chunk.
  # Under the GRPO step (12.3 s roofline) with margin 1.5: ceil(32 /
  # floor(8.2 / 0.32)) = 2 workers. With rl.pipeline='sync' a chunk's OCR
  # overlaps only the next chunk's sampling (0.77 s roofline): ceil(8 /
  # floor(0.51 / 0.32)) = 8, one image per worker per chunk; 8 of 208 vCPUs.
  # (easyocr would need 32 and could not keep pace with the chunks.)
  config.ocr.num_workers = 8
  # The sampler and the GRPO step take minutes to compile (565 s and 78 s
  # for nextflow_like on a v5p-128 AOT build): a resumed job reuses them.
  config.compilation_cache_dir = '~/.cache/varrl_jax/jax'
  return config


def infinity_config(model: str, arg=None):
  """``configs/<model>.py[:SIZE]``: `infinity` at SIZE (1024, 512 or 256)
  with `paper_rl`."""
  sizes = ('1024', '512', '256')
  if (arg or '1024') not in sizes:
    raise ValueError(f'configs/{model}.py:{arg}: expected one of {", ".join(sizes)}')
  return paper_rl(infinity(model, int(arg or 1024)))


def get_config(arg=None):
  model = arg or 'nextflow_like'
  if model not in MODELS:
    raise ValueError(f'configs/cvtg.py:{arg}: expected one of {", ".join(MODELS)}')
  return paper_rl(nextflow_like() if model == 'nextflow_like' else infinity(model))
