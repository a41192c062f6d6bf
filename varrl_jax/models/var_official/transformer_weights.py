"""The official VAR transformer state_dict (``var_d*.pth``) <-> our parameters.

Their keys and ours (``L`` = depth; our blocks are one scanned module, so
every per-block tensor is stacked on a leading layer axis):

| theirs | ours | transform |
|---|---|---|
| ``class_emb.weight`` [N+1, C] | ``class_emb`` | |
| ``pos_start`` [1, l0, C], ``pos_1LC`` [1, L, C] | same names | drop the 1 |
| ``lvl_embed.weight`` [S, C] | ``lvl_embed`` | |
| ``word_embed.{weight,bias}`` | ``word_embed.{kernel,bias}`` | W^T |
| ``shared_ada_lin.1.*`` [6C, D] | ``shared_ada_lin.lin.*`` [D, 6, C] | W^T, split 6C as (6, C) |
| ``blocks.i.ada_lin.1.*`` | ``blocks.ada_lin.lin.*`` [L, D, 6, C] | as above |
| ``blocks.i.ada_gss`` [1, 1, 6, C] | ``blocks.ada_gss`` [L, 6, C] | |
| ``blocks.i.attn.mat_qkv.weight`` [3C, C] | ``blocks.qkv.kernel`` [L, C, 3, H, hd] | W^T, split 3C as (3, H, hd) |
| ``blocks.i.attn.{q,v}_bias`` [C] | ``blocks.{q,v}_bias`` [L, H, hd] | |
| ``blocks.i.attn.scale_mul_1H11`` | ``blocks.scale_mul`` [L, H] | |
| ``blocks.i.attn.proj.*`` | ``blocks.proj.kernel`` [L, H, hd, C] | W^T |
| ``blocks.i.ffn.fc{1,2}.*`` | ``blocks.fc{1,2}.*`` | W^T |
| ``head_nm.ada_lin.1.*`` [2C, D] | ``head_nm.lin.*`` [D, 2, C] | W^T |
| ``head.*`` [V, C] | ``head.*`` | W^T |

Buffers (``lvl_1L``, ``attn_bias_for_masking``, ``blocks.i.attn.zero_k_bias``)
are recomputed by the model, never loaded: they are accepted and ignored.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from varrl_jax.models.var_official.errors import ConversionError
from varrl_jax.models.var_official.transformer import VarConfig

BUFFERS = re.compile(r'^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias)$')


def _torch_shapes(cfg: VarConfig) -> dict[str, tuple[int, ...]]:
  """Every parameter key of their model at this config, with its shape."""
  c, d, v = cfg.embed_dim, cfg.embed_dim, cfg.vocab_size
  sched = cfg.schedule
  shapes = {
    'class_emb.weight': (cfg.num_classes + 1, c),
    'pos_start': (1, int(sched.counts[0]), c),
    'pos_1LC': (1, sched.num_tokens, c),
    'lvl_embed.weight': (sched.num_scales, c),
    'word_embed.weight': (c, cfg.latent_dim),
    'word_embed.bias': (c,),
    'head_nm.ada_lin.1.weight': (2 * c, d),
    'head_nm.ada_lin.1.bias': (2 * c,),
    'head.weight': (v, c),
    'head.bias': (v,),
  }
  if cfg.shared_aln:
    shapes['shared_ada_lin.1.weight'] = (6 * c, d)
    shapes['shared_ada_lin.1.bias'] = (6 * c,)
  for i in range(cfg.depth):
    p = f'blocks.{i}.'
    if cfg.shared_aln:
      shapes[p + 'ada_gss'] = (1, 1, 6, c)
    else:
      shapes[p + 'ada_lin.1.weight'] = (6 * c, d)
      shapes[p + 'ada_lin.1.bias'] = (6 * c,)
    shapes[p + 'attn.scale_mul_1H11'] = (1, cfg.num_heads, 1, 1)
    shapes[p + 'attn.q_bias'] = (c,)
    shapes[p + 'attn.v_bias'] = (c,)
    shapes[p + 'attn.mat_qkv.weight'] = (3 * c, c)
    shapes[p + 'attn.proj.weight'] = (c, c)
    shapes[p + 'attn.proj.bias'] = (c,)
    shapes[p + 'ffn.fc1.weight'] = (cfg.mlp_dim, c)
    shapes[p + 'ffn.fc1.bias'] = (cfg.mlp_dim,)
    shapes[p + 'ffn.fc2.weight'] = (c, cfg.mlp_dim)
    shapes[p + 'ffn.fc2.bias'] = (c,)
  return shapes


def expected_state_shapes(cfg: VarConfig) -> dict[str, tuple[int, ...]]:
  """{their key: shape} of every parameter (buffers not included)."""
  return _torch_shapes(cfg)


def _check_keys(sd: dict, expected: dict, source: str) -> None:
  missing = sorted(set(expected) - set(sd))
  if missing:
    more = f' ({len(missing)} keys missing in all)' if len(missing) > 1 else ''
    raise ConversionError(source, missing[0], f'missing from the state_dict{more}')
  unexpected = sorted(k for k in set(sd) - set(expected) if not BUFFERS.match(k))
  if unexpected:
    more = f' ({len(unexpected)} unexpected in all)' if len(unexpected) > 1 else ''
    raise ConversionError(
      source, unexpected[0], f'not a parameter of this VAR transformer{more}'
    )
  for key, shape in expected.items():
    got = tuple(np.shape(sd[key]))
    if got != tuple(shape):
      raise ConversionError(source, key, f'shape {got}, expected {tuple(shape)}')


def _dense(w, b, out_shape=None):
  """torch Linear (W [out, in], b [out]) -> flax {kernel [in, *out], bias}."""
  k = np.asarray(w, np.float32).T
  bias = np.asarray(b, np.float32) if b is not None else None
  if out_shape is not None:
    k = k.reshape(k.shape[0], *out_shape)
    bias = bias.reshape(out_shape) if bias is not None else None
  return {'kernel': k} if bias is None else {'kernel': k, 'bias': bias}


def params_from_state_dict(
  sd: dict[str, np.ndarray], cfg: VarConfig, source: str
) -> dict:
  """Their state_dict -> ``{'params': ...}`` of `VarTransformer(cfg)`.

  Raises `ConversionError(source, key, ...)` on the first missing key (sorted),
  else the first unexpected one, else the first wrong shape.
  """
  _check_keys(sd, _torch_shapes(cfg), source)
  c, h, hd = cfg.embed_dim, cfg.num_heads, cfg.head_dim
  f32 = lambda k: np.asarray(sd[k], np.float32)  # noqa: E731
  out = {
    'class_emb': f32('class_emb.weight'),
    'pos_start': f32('pos_start')[0],
    'pos_1LC': f32('pos_1LC')[0],
    'lvl_embed': f32('lvl_embed.weight'),
    'word_embed': _dense(sd['word_embed.weight'], sd['word_embed.bias']),
    'head_nm': {
      'lin': _dense(
        sd['head_nm.ada_lin.1.weight'], sd['head_nm.ada_lin.1.bias'], (2, c)
      )
    },
    'head': _dense(sd['head.weight'], sd['head.bias']),
  }
  if cfg.shared_aln:
    out['shared_ada_lin'] = {
      'lin': _dense(sd['shared_ada_lin.1.weight'], sd['shared_ada_lin.1.bias'], (6, c))
    }

  def block(i: int) -> dict:
    p = f'blocks.{i}.'
    b = {
      'qkv': _dense(sd[p + 'attn.mat_qkv.weight'], None, (3, h, hd)),
      'q_bias': f32(p + 'attn.q_bias').reshape(h, hd),
      'v_bias': f32(p + 'attn.v_bias').reshape(h, hd),
      'scale_mul': f32(p + 'attn.scale_mul_1H11').reshape(h),
      'fc1': _dense(sd[p + 'ffn.fc1.weight'], sd[p + 'ffn.fc1.bias']),
      'fc2': _dense(sd[p + 'ffn.fc2.weight'], sd[p + 'ffn.fc2.bias']),
    }
    proj = _dense(sd[p + 'attn.proj.weight'], sd[p + 'attn.proj.bias'])
    b['proj'] = {'kernel': proj['kernel'].reshape(h, hd, c), 'bias': proj['bias']}
    if cfg.shared_aln:
      b['ada_gss'] = f32(p + 'ada_gss').reshape(6, c)
    else:
      b['ada_lin'] = {
        'lin': _dense(sd[p + 'ada_lin.1.weight'], sd[p + 'ada_lin.1.bias'], (6, c))
      }
    return b

  blocks = [traverse_util.flatten_dict(block(i)) for i in range(cfg.depth)]
  out['blocks'] = traverse_util.unflatten_dict(
    {k: np.stack([b[k] for b in blocks]) for k in blocks[0]}
  )
  return {'params': out}


def _linear(d: dict) -> tuple[np.ndarray, np.ndarray | None]:
  k = np.asarray(d['kernel'], np.float32)
  k = k.reshape(k.shape[0], -1).T
  b = d.get('bias')
  return k, None if b is None else np.asarray(b, np.float32).reshape(-1)


def state_dict_from_params(params: dict, cfg: VarConfig) -> dict[str, np.ndarray]:
  """Inverse of `params_from_state_dict` (parameters only, no buffers)."""
  p = params.get('params', params)
  sd = {
    'class_emb.weight': np.asarray(p['class_emb'], np.float32),
    'pos_start': np.asarray(p['pos_start'], np.float32)[None],
    'pos_1LC': np.asarray(p['pos_1LC'], np.float32)[None],
    'lvl_embed.weight': np.asarray(p['lvl_embed'], np.float32),
  }
  sd['word_embed.weight'], sd['word_embed.bias'] = _linear(p['word_embed'])
  sd['head_nm.ada_lin.1.weight'], sd['head_nm.ada_lin.1.bias'] = _linear(
    p['head_nm']['lin']
  )
  sd['head.weight'], sd['head.bias'] = _linear(p['head'])
  if cfg.shared_aln:
    sd['shared_ada_lin.1.weight'], sd['shared_ada_lin.1.bias'] = _linear(
      p['shared_ada_lin']['lin']
    )
  blocks = p['blocks']
  for i in range(cfg.depth):
    b = {
      k: np.asarray(v[i], np.float32)
      for k, v in traverse_util.flatten_dict(blocks).items()
    }
    b = traverse_util.unflatten_dict(b)
    q = f'blocks.{i}.'
    sd[q + 'attn.mat_qkv.weight'], _ = _linear(b['qkv'])
    sd[q + 'attn.q_bias'] = b['q_bias'].reshape(-1)
    sd[q + 'attn.v_bias'] = b['v_bias'].reshape(-1)
    sd[q + 'attn.scale_mul_1H11'] = b['scale_mul'].reshape(1, -1, 1, 1)
    proj_k = b['proj']['kernel'].reshape(-1, cfg.embed_dim).T
    sd[q + 'attn.proj.weight'], sd[q + 'attn.proj.bias'] = proj_k, b['proj']['bias']
    sd[q + 'ffn.fc1.weight'], sd[q + 'ffn.fc1.bias'] = _linear(b['fc1'])
    sd[q + 'ffn.fc2.weight'], sd[q + 'ffn.fc2.bias'] = _linear(b['fc2'])
    if cfg.shared_aln:
      sd[q + 'ada_gss'] = b['ada_gss'].reshape(1, 1, 6, -1)
    else:
      sd[q + 'ada_lin.1.weight'], sd[q + 'ada_lin.1.bias'] = _linear(
        b['ada_lin']['lin']
      )
  return sd
