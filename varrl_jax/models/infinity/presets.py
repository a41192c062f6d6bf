"""The official Infinity models as configs, and their config read off the
shapes of a pair of checkpoints (`infer_from_state_dicts`, for the converter).

`official_config` is ``tools/run_infinity.py``'s setting of a model type:
the transformer preset (`layers.PRESETS`), its BSQ VAE (``vae_type`` and
``apply_spatial_patchify``: 2B = infinity_vae_d32reg.pth, d = 32, ch 128 x
(1, 2, 4, 4, 4), stride 16; 8B = infinity_vae_d56_f8_14_patchify.pth, d = 14,
ch 128 x (1, 2, 4, 4), stride 8, 2x2 patchify so a token holds 4 x 14 = 56
bits) and the 1:1 schedule of ``pn`` at its resolution
(`schedules.scale_schedule`); sampling as their ``scripts/infer.sh``.
"""

from __future__ import annotations

import re

import ml_collections

from varrl_jax.config import base_config
from varrl_jax.models.infinity import layers, schedules
from varrl_jax.models.var_official.errors import ConversionError

# Their pn per image side at 1:1 (dynamic_resolution_h_w[1.0][pn]).
PN_BY_RESOLUTION = {256: '0.06M', 512: '0.25M', 768: '0.60M', 1024: '1M'}
VAES = {
  'infinity_2b': dict(
    channels=(128, 256, 512, 512, 512), latent_dim=32, downsample=16, patchify=False
  ),
  'infinity_8b': dict(
    channels=(128, 256, 512, 512), latent_dim=14, downsample=8, patchify=True
  ),
}
NUM_RES_BLOCKS = 2  # every released BSQ VAE (their vae_model)


def _check_resolution(resolution: int) -> str:
  if resolution not in PN_BY_RESOLUTION:
    raise ValueError(
      f'Infinity resolution {resolution}: expected one of {sorted(PN_BY_RESOLUTION)}'
    )
  return PN_BY_RESOLUTION[resolution]


def _schedule(config, resolution: int, stride: int) -> None:
  """Scales of the 1:1 ``pn`` of ``resolution``; image = last grid x stride."""
  grids = schedules.scale_schedule(1.0, _check_resolution(resolution))
  config.scales = grids
  config.image_size = (grids[-1][0] * stride, grids[-1][1] * stride)


def official_config(
  model: str = 'infinity_2b', resolution: int = 1024
) -> ml_collections.ConfigDict:
  """`base_config` with the Infinity family at ``model`` ('infinity_2b' |
  'infinity_8b'), ``resolution``^2 (1024: pn '1M', 13 scales 1..64; 768
  '0.60M'; 512 '0.25M', 10 scales; 256 '0.06M', 7 scales). float32 as the
  weights are; the configs choose precision and memory settings.

  Sampling is their ``infer.sh`` (2B): CFG 4 on the logits at every scale
  (constant), tau 0.5, top-k 900, top-p 0.97. Top-k 900 changes nothing with
  2 classes per bit; top-p 0.97 drops a bit's minority class when its
  probability is <= 0.03.
  """
  if model not in VAES:
    raise ValueError(f'Infinity model {model!r}: expected one of {sorted(VAES)}')
  vae = VAES[model]
  c = base_config()
  c.model.family = 'infinity'
  c.model.infinity.preset = model
  c.model.infinity.spatial_patchify = vae['patchify']
  c.tokenizer.channels = vae['channels']
  c.tokenizer.num_res_blocks = NUM_RES_BLOCKS
  c.tokenizer.latent_dim = vae['latent_dim']
  c.tokenizer.downsample = vae['downsample']
  _schedule(c, resolution, vae['downsample'] * (2 if vae['patchify'] else 1))
  c.sampling.cfg_schedule = 'constant'
  c.sampling.cfg_scale = 4.0
  c.sampling.temperature = 0.5
  c.sampling.top_k = 900
  c.sampling.top_p = 0.97
  return c


def _shape(sd: dict, keys: tuple[str, ...], source: str) -> tuple[int, ...]:
  """The shape of the first of ``keys`` present (their key spellings)."""
  for key in keys:
    if key in sd:
      return tuple(sd[key].shape)
  raise ConversionError(source, keys[0], 'missing from the state_dict')


_BLOCK = re.compile(
  r'^(blocks\.\d+\.|block_chunks\.\d+\.module\.\d+\.)ffn\.fc1\.weight$'
)
_VAE_DOWN = re.compile(r'^encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.')


def _block_prefix_order(prefix: str) -> tuple[int, ...]:
  return tuple(int(n) for n in re.findall(r'\d+', prefix))


def infer_from_state_dicts(
  vae_sd: dict, vae_source: str, tr_sd: dict, tr_source: str, resolution: int = 1024
) -> ml_collections.ConfigDict:
  """The config of official Infinity checkpoints, read off their shapes.

  Transformer: depth (its blocks, ``blocks.i`` or ``block_chunks.c.module.
  j``), width (``pos_start``), heads (``sa.scale_mul_1H11``), MLP ratio,
  bits d (``word_embed``), text channels and ``cfg_uncond`` rows. VAE: ch x
  ch_mult (each level's first ``conv1``), res blocks, bits
  (``conv_out``), stride 2^(levels - 1). The 2x2 spatial patchify is on when
  the transformer's d is 4x the VAE's. Sizes equal to a preset give
  `official_config` of it; others give explicit sizes. The converter then
  checks every key and shape against the model this config builds.
  """
  prefixes = sorted(
    (m.group(1) for k in tr_sd if (m := _BLOCK.match(k))), key=_block_prefix_order
  )
  if not prefixes:
    raise ConversionError(
      tr_source,
      'blocks.0.ffn.fc1.weight',
      'no transformer blocks: not an Infinity checkpoint',
    )
  depth = len(prefixes)
  embed_dim = _shape(tr_sd, ('pos_start',), tr_source)[-1]
  heads = _shape(tr_sd, (prefixes[0] + 'sa.scale_mul_1H11',), tr_source)[1]
  mlp = _shape(tr_sd, (prefixes[0] + 'ffn.fc1.weight',), tr_source)[0]
  bits = _shape(tr_sd, ('word_embed.weight',), tr_source)[1]
  rows, text_channels = _shape(tr_sd, ('cfg_uncond',), tr_source)

  conv_out = ('encoder.conv_out.conv.weight', 'encoder.conv_out.weight')
  latent_dim = _shape(vae_sd, conv_out, vae_source)[0]
  downs = {}
  for k in vae_sd:
    if m := _VAE_DOWN.match(k):
      level, block = int(m.group(1)), int(m.group(2))
      downs.setdefault(level, set()).add(block)
  if not downs or sorted(downs) != list(range(len(downs))):
    raise ConversionError(
      vae_source,
      'encoder.down.0.block.0.conv1.conv.weight',
      'missing or levels skipped',
    )
  channels = tuple(
    _shape(
      vae_sd,
      (
        f'encoder.down.{i}.block.0.conv1.conv.weight',
        f'encoder.down.{i}.block.0.conv1.weight',
      ),
      vae_source,
    )[0]
    for i in sorted(downs)
  )
  num_res_blocks = len(downs[0])
  downsample = 2 ** (len(channels) - 1)
  if bits == latent_dim:
    patchify = False
  elif bits == 4 * latent_dim:
    patchify = True
  else:
    raise ConversionError(
      tr_source,
      'word_embed.weight',
      f'{bits} input bits fit neither the VAE ({vae_source}) d={latent_dim} nor its '
      f'2x2 patchify (4 d = {4 * latent_dim})',
    )

  sizes = dict(depth=depth, embed_dim=embed_dim, num_heads=heads, bits=bits)
  official = [
    name
    for name, preset in layers.PRESETS.items()
    if preset == sizes
    and VAES[name]['channels'] == channels
    and VAES[name]['latent_dim'] == latent_dim
    and VAES[name]['patchify'] == patchify
  ]
  c = official_config(official[0] if official else 'infinity_2b', resolution)
  ic = c.model.infinity
  if not official:
    ic.preset = ''
    ic.depth, ic.embed_dim, ic.num_heads = depth, embed_dim, heads
  ic.mlp_ratio = mlp / embed_dim
  ic.spatial_patchify = patchify
  ic.text_channels = text_channels
  ic.text_maxlen = rows
  ic.text_len = min(rows, ic.text_len)
  c.tokenizer.channels = channels
  c.tokenizer.num_res_blocks = num_res_blocks
  c.tokenizer.latent_dim = latent_dim
  c.tokenizer.downsample = downsample
  _schedule(c, resolution, downsample * (2 if patchify else 1))
  return c
