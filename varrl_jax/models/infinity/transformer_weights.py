"""The official Infinity transformer state_dict <-> our parameters.

Their checkpoints (``infinity_2b_reg.pth``, a torch state_dict; the 8B
``model-*.safetensors`` shards, read into one dict) name the blocks
``block_chunks.{c}.module.{j}.`` (``run_infinity.py`` builds both with
``block_chunks=8``: block i = c * depth / 8 + j) or, with ``block_chunks=1``,
``blocks.{i}.``; both are accepted. ``L`` = depth (our blocks are one scanned
module: every per-block tensor gains a leading layer axis), C = embed_dim,
Ct = text channels, d = bits, ``P`` = the block prefix:

| theirs | ours | transform |
|---|---|---|
| ``cfg_uncond`` [T', Ct] | ``cfg_uncond`` [T, Ct] | first T = text_maxlen rows |
| ``pos_start`` [1, 1, C] | ``pos_start`` [C] | |
| ``lvl_embed.weight`` [15, C] | ``lvl_embed`` | |
| ``text_norm.weight`` | ``text_norm.scale`` | |
| ``text_proj_for_sos.ca.mat_q`` [1, Hp, dp] | ``text_pool.query`` [Hp, dp] | |
| ``text_proj_for_sos.ca.mat_kv.weight`` [2C, Ct] | ``text_pool.kv.kernel`` [Ct, 2, Hp, dp] | W^T |
| ``text_proj_for_sos.ca.v_bias`` [C] | ``text_pool.v_bias`` [Hp, dp] | |
| ``text_proj_for_sos.ca.proj.*`` | ``text_pool.proj.*`` (kernel [Hp, dp, C]) | W^T |
| ``text_proj_for_ca.{0,2}.*`` | ``text_proj.{fc1,fc2}.*`` | W^T |
| ``word_embed.*`` [C, d] | ``word_embed.*`` | W^T |
| ``shared_ada_lin.1.*`` [6C, C] | ``shared_ada_lin.lin.*`` [C, 6, C] | W^T |
| ``head_nm.ada_lin.1.*`` [2C, C] | ``head_nm.lin.*`` [C, 2, C] | W^T |
| ``head.*`` [2d, C] | ``head.*`` (kernel [C, d, 2]) | W^T |
| ``P ada_gss`` [1, 1, 6, C] | ``blocks.ada_gss`` [L, 6, C] | |
| ``P sa.mat_qkv.weight`` [3C, C] | ``blocks.sa.qkv.kernel`` [L, C, 3, H, D] | W^T |
| ``P sa.{q,v}_bias``, ``P sa.scale_mul_1H11`` | ``blocks.sa.{q_bias,v_bias,scale_mul}`` | |
| ``P sa.proj.*``, ``P ca.proj.*`` | ``blocks.{sa,ca}.proj.*`` (kernel [L, H, D, C]) | W^T |
| ``P ca.mat_q.*`` | ``blocks.ca.q.*`` (kernel [L, C, H, D]) | W^T |
| ``P ca.mat_kv.weight`` [2C, C], ``P ca.v_bias`` | ``blocks.ca.{kv_proj.kernel, v_bias}`` | W^T |
| ``P ca_norm.{weight,bias}`` | ``blocks.ca.norm.{scale,bias}`` | |
| ``P ffn.fc{1,2}.*`` | ``blocks.fc{1,2}.*`` | W^T |

Buffers (``*.zero_k_bias``, ``lvl_1L``, ``attn_bias_for_masking``,
``Infinity_visible_kvlen``, ``Infinity_invisible_qlen``) are accepted and
ignored.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from varrl_jax.models.infinity.layers import NUM_LEVELS, InfinityConfig
from varrl_jax.models.var_official.errors import ConversionError

BUFFERS = re.compile(
  r'^(lvl_1L|attn_bias_for_masking|Infinity_visible_kvlen|Infinity_invisible_qlen'
  r'|(.*\.)?zero_k_bias)$'
)
_CHUNKED = re.compile(r'^block_chunks\.(\d+)\.module\.(\d+)\.')


def _linears(cfg: InfinityConfig) -> dict[str, tuple[str, tuple[int, ...], tuple]]:
  """{their Linear prefix: (our path, torch weight shape, our out shape)}."""
  c, ct, d = cfg.embed_dim, cfg.text_channels, cfg.bits
  hp, dp, h, hd = cfg.pool_heads, cfg.pool_head_dim, cfg.num_heads, cfg.head_dim
  return {
    'text_proj_for_sos.ca.mat_kv': ('text_pool.kv', (2 * c, ct), (2, hp, dp)),
    'text_proj_for_sos.ca.proj': ('text_pool.proj', (c, c), (c,)),
    'text_proj_for_ca.0': ('text_proj.fc1', (c, ct), (c,)),
    'text_proj_for_ca.2': ('text_proj.fc2', (c, c), (c,)),
    'word_embed': ('word_embed', (c, d), (c,)),
    'shared_ada_lin.1': ('shared_ada_lin.lin', (6 * c, c), (6, c)),
    'head_nm.ada_lin.1': ('head_nm.lin', (2 * c, c), (2, c)),
    'head': ('head', (2 * d, c), (d, 2)),
    # per block (suffixes of the block prefix):
    'sa.mat_qkv': ('sa.qkv', (3 * c, c), (3, h, hd)),
    'sa.proj': ('sa.proj', (c, c), (c,)),
    'ca.mat_q': ('ca.q', (c, c), (h, hd)),
    'ca.mat_kv': ('ca.kv_proj', (2 * c, c), (2, h, hd)),
    'ca.proj': ('ca.proj', (c, c), (c,)),
    'ffn.fc1': ('fc1', (cfg.mlp_dim, c), (cfg.mlp_dim,)),
    'ffn.fc2': ('fc2', (c, cfg.mlp_dim), (c,)),
  }


_NO_BIAS = {'text_proj_for_sos.ca.mat_kv', 'sa.mat_qkv', 'ca.mat_kv'}
# Their proj layers take [B, L, H*D]: our kernels are [H, D, C].
_HEADS_IN = {'text_proj_for_sos.ca.proj', 'sa.proj', 'ca.proj'}


def _tensors(cfg: InfinityConfig) -> dict[str, tuple[str, tuple[int, ...], tuple]]:
  """{their non-Linear key: (our path, their shape, our shape)}."""
  c, h, hd = cfg.embed_dim, cfg.num_heads, cfg.head_dim
  hp, dp = cfg.pool_heads, cfg.pool_head_dim
  return {
    'pos_start': ('pos_start', (1, 1, c), (c,)),
    'lvl_embed.weight': ('lvl_embed', (NUM_LEVELS, c), (NUM_LEVELS, c)),
    'text_norm.weight': ('text_norm.scale', (cfg.text_channels,), (cfg.text_channels,)),
    'text_proj_for_sos.ca.mat_q': ('text_pool.query', (1, hp, dp), (hp, dp)),
    'text_proj_for_sos.ca.v_bias': ('text_pool.v_bias', (c,), (hp, dp)),
    # per block:
    'ada_gss': ('ada_gss', (1, 1, 6, c), (6, c)),
    'sa.scale_mul_1H11': ('sa.scale_mul', (1, h, 1, 1), (h,)),
    'sa.q_bias': ('sa.q_bias', (c,), (h, hd)),
    'sa.v_bias': ('sa.v_bias', (c,), (h, hd)),
    'ca.v_bias': ('ca.v_bias', (c,), (h, hd)),
    'ca_norm.weight': ('ca.norm.scale', (c,), (c,)),
    'ca_norm.bias': ('ca.norm.bias', (c,), (c,)),
  }


def _is_block(key: str) -> bool:
  return key.startswith(('sa.', 'ca.', 'ca_norm.', 'ffn.', 'ada_gss'))


def block_prefixes(cfg: InfinityConfig, block_chunks: int) -> list[str]:
  """Their key prefix of each block, in order."""
  if block_chunks == 1:
    return [f'blocks.{i}.' for i in range(cfg.depth)]
  if cfg.depth % block_chunks:
    raise ValueError(f'block_chunks={block_chunks} does not divide depth={cfg.depth}')
  per = cfg.depth // block_chunks
  return [f'block_chunks.{i // per}.module.{i % per}.' for i in range(cfg.depth)]


def expected_state_shapes(cfg: InfinityConfig, block_chunks: int = 1) -> dict:
  """{their key: shape} of every parameter (buffers not included)."""
  shapes = {'cfg_uncond': (cfg.text_maxlen, cfg.text_channels)}
  prefixes = block_prefixes(cfg, block_chunks)
  for key, (_, shape, _) in _tensors(cfg).items():
    for p in prefixes if _is_block(key) else ['']:
      shapes[p + key] = shape
  for key, (_, shape, _) in _linears(cfg).items():
    for p in prefixes if _is_block(key) else ['']:
      shapes[p + key + '.weight'] = shape
      if key not in _NO_BIAS:
        shapes[p + key + '.bias'] = (shape[0],)
  return shapes


def _detect_chunks(sd: dict) -> int:
  chunks = {int(m.group(1)) for k in sd if (m := _CHUNKED.match(k))}
  return max(chunks) + 1 if chunks else 1


def _check(sd: dict, expected: dict, source: str) -> None:
  missing = sorted(set(expected) - set(sd))
  if missing:
    more = f' ({len(missing)} keys missing in all)' if len(missing) > 1 else ''
    raise ConversionError(source, missing[0], f'missing from the state_dict{more}')
  extra = sorted(k for k in set(sd) - set(expected) if not BUFFERS.match(k))
  if extra:
    more = f' ({len(extra)} unexpected in all)' if len(extra) > 1 else ''
    raise ConversionError(
      source, extra[0], f'not a parameter of this Infinity transformer{more}'
    )
  for key, shape in expected.items():
    got = tuple(np.shape(sd[key]))
    if key == 'cfg_uncond':
      if len(got) != 2 or got[1] != shape[1] or got[0] < shape[0]:
        raise ConversionError(
          source, key, f'shape {got}, expected (>= {shape[0]}, {shape[1]})'
        )
    elif got != tuple(shape):
      raise ConversionError(source, key, f'shape {got}, expected {tuple(shape)}')


def params_from_state_dict(sd: dict, cfg: InfinityConfig, source: str) -> dict:
  """Their state_dict -> ``{'params': ...}`` of `InfinityTransformer(cfg)`.

  The block naming (``blocks.i`` or ``block_chunks.c.module.j``) is read
  from the keys. Raises `ConversionError(source, key, ...)` on the first
  missing key (sorted), else the first unexpected one, else a wrong shape.
  """
  chunks = _detect_chunks(sd)
  if cfg.depth % chunks:
    raise ConversionError(
      source,
      f'block_chunks.{chunks - 1}',
      f'{chunks} chunks do not divide depth {cfg.depth}',
    )
  _check(sd, expected_state_shapes(cfg, chunks), source)
  prefixes = block_prefixes(cfg, chunks)
  f32 = lambda k: np.asarray(sd[k], np.float32)  # noqa: E731
  flat = {'cfg_uncond': f32('cfg_uncond')[: cfg.text_maxlen]}

  def put(key, path, value, is_block):
    flat[('blocks.' if is_block else '') + path] = value

  for key, (path, _, out) in _tensors(cfg).items():
    if _is_block(key):
      put(key, path, np.stack([f32(p + key).reshape(out) for p in prefixes]), True)
    else:
      put(key, path, f32(key).reshape(out), False)
  for key, (path, _, out) in _linears(cfg).items():
    block = _is_block(key)
    names = [p + key for p in prefixes] if block else [key]
    kernels, biases = [], []
    for n in names:
      w = f32(n + '.weight').T  # [in, out]
      if key in _HEADS_IN:
        heads = (
          (cfg.pool_heads, cfg.pool_head_dim)
          if key.startswith('text')
          else (cfg.num_heads, cfg.head_dim)
        )
        kernels.append(w.reshape(*heads, *out))
      else:
        kernels.append(w.reshape(w.shape[0], *out))
      if key not in _NO_BIAS:
        biases.append(f32(n + '.bias').reshape(out))
    stack = (lambda xs: np.stack(xs)) if block else (lambda xs: xs[0])  # noqa: E731
    put(key, path + '.kernel', stack(kernels), block)
    if biases:
      put(key, path + '.bias', stack(biases), block)
  return {'params': traverse_util.unflatten_dict(flat, sep='.')}


def state_dict_from_params(params: dict, cfg: InfinityConfig, block_chunks: int = 1):
  """The inverse of `params_from_state_dict` (buffers omitted); for tests."""
  flat = traverse_util.flatten_dict(params.get('params', params), sep='.')
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  prefixes = block_prefixes(cfg, block_chunks)
  sd = {'cfg_uncond': flat['cfg_uncond']}
  for key, (path, shape, _) in _tensors(cfg).items():
    if _is_block(key):
      for i, p in enumerate(prefixes):
        sd[p + key] = flat['blocks.' + path][i].reshape(shape)
    else:
      sd[key] = flat[path].reshape(shape)
  for key, (path, shape, _) in _linears(cfg).items():
    block = _is_block(key)
    full = ('blocks.' if block else '') + path
    kernels, biases = flat[full + '.kernel'], flat.get(full + '.bias')
    for i, p in enumerate(prefixes if block else ['']):
      k = kernels[i] if block else kernels
      # kernel [in, *out] (or [H, D, C] for the projections) -> W [out, in].
      rows = -1 if key in _HEADS_IN else shape[1]
      sd[p + key + '.weight'] = k.reshape(rows, shape[0]).T
      if key not in _NO_BIAS:
        sd[p + key + '.bias'] = (biases[i] if block else biases).reshape(shape[0])
  return sd
