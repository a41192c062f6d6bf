"""open_clip checkpoints (e.g. HPS-v2's ``HPS_v2_compressed.pt``) for `clip_weights`.

A checkpoint file holds an open_clip ``CLIP`` state dict, possibly under
``state_dict`` and/or ``module.``. Its architecture is a name of
`OPEN_CLIP_ARCHS` (open_clip's model configs, kept here as data; add
``-quickgelu`` for OpenAI's weights), a path to an open_clip model-config
JSON, or '' to pick the listed architecture whose shapes match. The tokenizer
is ``bpe_simple_vocab_16e6.txt.gz`` (it ships inside the open_clip package)
or a Hugging Face tokenizer folder. Key mapping as strict as for Hugging Face
folders: one `ClipWeightsError` line naming the file and key.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from varrl_jax.models import clip as clip_lib
from varrl_jax.models.clip_weights import (
  ClipWeightsError,
  LoadedClip,
  _check_shapes,
  _read,
  _Reader,
  _stack,
  _tokenizer,
)

# open_clip's model configs (open_clip/model_configs/*.json) of the models we
# support; heads of the image tower = width / head_width, MLP width = 4 w.
OPEN_CLIP_ARCHS = {
  'ViT-B-32': dict(embed_dim=512, patch_size=32, vision_width=768, vision_layers=12,
                   head_width=64, text_width=512, text_heads=8, text_layers=12),
  'ViT-B-16': dict(embed_dim=512, patch_size=16, vision_width=768, vision_layers=12,
                   head_width=64, text_width=512, text_heads=8, text_layers=12),
  'ViT-L-14': dict(embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24,
                   head_width=64, text_width=768, text_heads=12, text_layers=12),
  'ViT-H-14': dict(embed_dim=1024, patch_size=14, vision_width=1280, vision_layers=32,
                   head_width=80, text_width=1024, text_heads=16, text_layers=24),
}  # fmt: skip

_OPEN_CLIP_BUFFERS = ('attn_mask',)


def _open_clip_state(path: str) -> dict[str, np.ndarray]:
  state = _read(path)
  for prefix in ('state_dict.', 'model.', 'module.'):
    if state and all(k.startswith(prefix) for k in state):
      state = {k[len(prefix) :]: v for k, v in state.items()}
  return state


def open_clip_config(
  arch: str, state: dict | None = None, path: str = ''
) -> clip_lib.ClipConfig:
  """`ClipConfig` of an open_clip architecture name, model-config JSON file, or
  ('' and a state dict) the listed architecture its shapes match."""
  quick = arch.endswith('-quickgelu')
  name = arch.removesuffix('-quickgelu')
  if name in OPEN_CLIP_ARCHS:
    a = OPEN_CLIP_ARCHS[name]
    vision = dict(
      image_size=224,
      layers=a['vision_layers'],
      width=a['vision_width'],
      patch_size=a['patch_size'],
      head_width=a['head_width'],
    )
    text = dict(width=a['text_width'], heads=a['text_heads'], layers=a['text_layers'])
    return _from_open_clip_cfg(
      {'embed_dim': a['embed_dim'], 'vision_cfg': vision, 'text_cfg': text,
       'quick_gelu': quick}, arch)  # fmt: skip
  if arch.endswith('.json'):
    if not os.path.isfile(arch):
      raise ClipWeightsError(f'{arch}: no such open_clip model config')
    with open(arch, encoding='utf-8') as f:
      return _from_open_clip_cfg(json.load(f), arch)
  if not arch and state is not None:
    for known in OPEN_CLIP_ARCHS:
      cfg = open_clip_config(known)
      if _shapes_match(state, cfg):
        return cfg
    raise ClipWeightsError(
      f'{path}: its shapes match none of {", ".join(OPEN_CLIP_ARCHS)}; name the '
      'architecture (an open_clip model-config .json for others)'
    )
  raise ClipWeightsError(
    f'unknown open_clip architecture {arch!r}: one of {", ".join(OPEN_CLIP_ARCHS)} '
    '(optionally -quickgelu), or an open_clip model-config .json'
  )


_VISION_KEYS = {
  'image_size',
  'layers',
  'width',
  'patch_size',
  'head_width',
  'mlp_ratio',
}
_TEXT_KEYS = {'context_length', 'vocab_size', 'width', 'heads', 'layers', 'mlp_ratio'}


def _from_open_clip_cfg(m: dict, where: str) -> clip_lib.ClipConfig:
  v, t = m.get('vision_cfg', {}), m.get('text_cfg', {})
  for part, keys, allowed in (
    ('vision_cfg', v, _VISION_KEYS),
    ('text_cfg', t, _TEXT_KEYS),
  ):
    bad = sorted(set(keys) - allowed)
    if bad:
      raise ClipWeightsError(
        f'{where}: {part}.{bad[0]} is not supported (plain ViT CLIP only)'
      )
  act = 'quick_gelu' if m.get('quick_gelu', False) else 'gelu'
  vw, tw = v.get('width', 768), t.get('width', 512)
  return clip_lib.ClipConfig(
    embed_dim=m['embed_dim'],
    image_size=v.get('image_size', 224),
    patch_size=v.get('patch_size', 16),
    vision_width=vw,
    vision_layers=v.get('layers', 12),
    vision_heads=vw // v.get('head_width', 64),
    vision_mlp_dim=int(vw * v.get('mlp_ratio', 4.0)),
    vision_act=act,
    vocab_size=t.get('vocab_size', 49408),
    context_length=t.get('context_length', 77),
    text_width=tw,
    text_layers=t.get('layers', 12),
    text_heads=t.get('heads', 8),
    text_mlp_dim=int(tw * t.get('mlp_ratio', 4.0)),
    text_act=act,
    text_pool='argmax',
  )


def _shapes_match(state: dict, cfg: clip_lib.ClipConfig) -> bool:
  def layers(prefix):
    pat = re.compile(re.escape(prefix) + r'(\d+)\.')
    return len({m.group(1) for k in state if (m := pat.match(k))})

  conv = state.get('visual.conv1.weight')
  proj = state.get('text_projection')
  return (
    conv is not None
    and proj is not None
    and tuple(conv.shape) == (cfg.vision_width, 3, cfg.patch_size, cfg.patch_size)
    and tuple(proj.shape[-2:]) == (cfg.text_width, cfg.embed_dim)
    and layers('visual.transformer.resblocks.') == cfg.vision_layers
    and layers('transformer.resblocks.') == cfg.text_layers
  )


def _open_clip_block(r: _Reader, p: str, width: int) -> dict:
  w_in, b_in = r(p + '.attn.in_proj_weight'), r(p + '.attn.in_proj_bias')
  qkv = {
    n: {
      'kernel': w_in[i * width : (i + 1) * width].T,
      'bias': b_in[i * width : (i + 1) * width],
    }
    for i, n in enumerate('qkv')
  }
  return {
    'ln_1': r.norm(p + '.ln_1'),
    **qkv,
    'out': r.dense(p + '.attn.out_proj'),
    'ln_2': r.norm(p + '.ln_2'),
    'fc1': r.dense(p + '.mlp.c_fc'),
    'fc2': r.dense(p + '.mlp.c_proj'),
  }


def params_from_open_clip(state: dict, cfg: clip_lib.ClipConfig, path: str) -> dict:
  """Our parameter tree from an open_clip ``CLIP`` state dict (strict)."""
  r = _Reader(state, path)
  vb, tb = 'visual.transformer.resblocks', 'transformer.resblocks'
  params = {
    'vision': {
      'patch_embed': {'kernel': r('visual.conv1.weight').transpose(2, 3, 1, 0)},
      'class_embedding': r('visual.class_embedding'),
      'position_embedding': r('visual.positional_embedding'),
      'ln_pre': r.norm('visual.ln_pre'),
      'blocks': _stack(
        [
          _open_clip_block(r, f'{vb}.{i}', cfg.vision_width)
          for i in range(cfg.vision_layers)
        ]
      ),
      'ln_post': r.norm('visual.ln_post'),
      'projection': r('visual.proj'),
    },
    'text': {
      'token_embedding': {'embedding': r('token_embedding.weight')},
      'position_embedding': r('positional_embedding'),
      'blocks': _stack(
        [
          _open_clip_block(r, f'{tb}.{i}', cfg.text_width)
          for i in range(cfg.text_layers)
        ]
      ),
      'ln_final': r.norm('ln_final'),
      'projection': r('text_projection'),
    },
    'logit_scale': r('logit_scale').reshape(()),
  }
  r.finish(_OPEN_CLIP_BUFFERS)
  _check_shapes(params, cfg, path)
  return params


def load_open_clip(path: str, arch: str = '', tokenizer: str = '') -> LoadedClip:
  """An open_clip checkpoint file (see the module docstring)."""
  if not os.path.isfile(path):
    raise ClipWeightsError(f'{path}: no such file')
  if not tokenizer:
    raise ClipWeightsError(
      f'{path}: an open_clip checkpoint needs a tokenizer path '
      '(bpe_simple_vocab_16e6.txt.gz from the open_clip package, or a Hugging '
      'Face tokenizer folder)'
    )
  state = _open_clip_state(path)
  try:
    cfg = open_clip_config(arch, state, path)
  except (TypeError, ValueError, KeyError) as e:
    if isinstance(e, ClipWeightsError):
      raise
    raise ClipWeightsError(f'{arch}: bad open_clip model config ({e})') from None
  params = params_from_open_clip(state, cfg, path)
  tok = _tokenizer(tokenizer, cfg.context_length)
  return LoadedClip(cfg, params, tok, f'open_clip:{arch or "inferred"}:{path}')
