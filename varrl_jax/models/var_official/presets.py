"""The official VAR model sizes as configs (``build_vae_var`` and ``--pn``).

Used by ``configs/var.py`` and by the converter, which infers the preset of a
checkpoint from its shapes (`infer_from_state_dicts`).
"""

from __future__ import annotations

import re

import ml_collections

from varrl_jax.config import base_config
from varrl_jax.models.var_official.errors import ConversionError

PATCH_NUMS = {
  256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
  512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
}
PUBLIC_DEPTHS = (16, 20, 24, 30, 36)


def official_config(
  depth: int = 16, resolution: int | None = None
) -> ml_collections.ConfigDict:
  """`base_config` with the VAR family at ``depth`` (width 64 d, d heads) and
  the VQ-VAE ``vae_ch160v4096z32``; 512^2 and shared AdaLN for d36 (VAR-d36-s),
  else 256^2. Sampling: the official demo's CFG 4 (their ramp), top-k 900,
  top-p 0.95."""
  if depth < 1:
    raise ValueError(f'VAR depth must be positive, got {depth}')
  resolution = resolution or (512 if depth == 36 else 256)
  if resolution not in PATCH_NUMS:
    raise ValueError(
      f'VAR resolution {resolution}: expected one of {sorted(PATCH_NUMS)}'
    )
  c = base_config()
  c.model.family = 'var'
  c.image_size = (resolution, resolution)
  c.scales = tuple((p, p) for p in PATCH_NUMS[resolution])
  c.tokenizer.downsample = 16
  c.tokenizer.channels = (160, 160, 320, 320, 640)
  c.tokenizer.num_res_blocks = 2
  c.tokenizer.latent_dim = 32
  c.tokenizer.codebook_size = 4096
  c.tokenizer.phi_count = 4
  c.tokenizer.phi_ratio = 0.5
  c.model.var.depth = depth
  c.model.var.shared_aln = depth == 36
  c.sampling.cfg_schedule = 'var'
  c.sampling.cfg_scale = 4.0
  c.sampling.top_k = 900
  c.sampling.top_p = 0.95
  c.sampling.temperature = 1.0
  return c


def _shape(sd: dict, key: str, source: str) -> tuple[int, ...]:
  if key not in sd:
    raise ConversionError(source, key, 'missing from the state_dict')
  return tuple(sd[key].shape)


def infer_from_state_dicts(
  vae_sd: dict, vae_source: str, var_sd: dict, var_source: str
) -> ml_collections.ConfigDict:
  """The config of a pair of official checkpoints, read off their shapes
  (depth, width, heads, classes, shared AdaLN, resolution; VQ-VAE width,
  latent, codebook, phi count). The converter then checks every key and
  shape against the model this config builds."""
  blocks = {int(m.group(1)) for k in var_sd if (m := re.match(r'blocks\.(\d+)\.', k))}
  if not blocks:
    raise ConversionError(
      var_source, 'blocks.0.*', 'no transformer blocks: not a VAR checkpoint'
    )
  depth = max(blocks) + 1
  rows, width = _shape(var_sd, 'class_emb.weight', var_source)
  heads = _shape(var_sd, 'blocks.0.attn.scale_mul_1H11', var_source)[1]
  mlp = _shape(var_sd, 'blocks.0.ffn.fc1.weight', var_source)[0]
  length = _shape(var_sd, 'pos_1LC', var_source)[1]
  by_length = {sum(p * p for p in pn): r for r, pn in PATCH_NUMS.items()}
  if length not in by_length:
    raise ConversionError(
      var_source, 'pos_1LC', f'{length} tokens match no official schedule {by_length}'
    )
  c = official_config(depth, by_length[length])
  c.model.var.embed_dim = width
  c.model.var.num_heads = heads
  c.model.var.mlp_ratio = mlp / width
  c.model.var.num_classes = rows - 1
  c.model.var.shared_aln = 'shared_ada_lin.1.weight' in var_sd
  ch = _shape(vae_sd, 'encoder.conv_in.weight', vae_source)[0]
  c.tokenizer.channels = tuple(ch * m for m in (1, 1, 2, 2, 4))
  c.tokenizer.latent_dim = _shape(vae_sd, 'quant_conv.weight', vae_source)[0]
  c.tokenizer.codebook_size = _shape(vae_sd, 'quantize.embedding.weight', vae_source)[0]
  phis = {
    m.group(1)
    for k in vae_sd
    if (m := re.match(r'quantize\.quant_resi\.qresi_ls\.(\d+)\.', k))
  }
  if phis:
    c.tokenizer.phi_count = len(phis)
  return c
