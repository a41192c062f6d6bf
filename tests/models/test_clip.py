"""CLIP in Flax against the reference libraries' own forward passes.

Tiny random models are built and saved by transformers / open_clip
(tests/models/clip_fixture.py), loaded with our loaders, and fed the same
pixels and token ids; features and logits agree to 1e-4.
"""

import json
import os

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from tests.models import clip_fixture as fx
from varrl_jax.models import clip as clip_lib
from varrl_jax.models import clip_open_clip, clip_weights
from varrl_jax.models.clip_weights import ClipWeightsError

TOL = 1e-4


def _ours(loaded, pixels_nhwc, ids):
  model = clip_lib.ClipModel(loaded.config)
  p = {'params': loaded.params}
  f_i = model.apply(p, pixels_nhwc, method='encode_image')
  f_t = model.apply(p, ids, method='encode_text')
  logits = np.exp(loaded.params['logit_scale']) * (
    clip_lib.normalize(f_i) @ clip_lib.normalize(f_t).T
  )
  return np.asarray(f_i), np.asarray(f_t), np.asarray(logits)


def out_pixels(pixels_nhwc):
  return torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2))


def _features(out):
  # transformers 5 returns an output whose pooler_output is the projection.
  return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()


@pytest.mark.parametrize('act, legacy_eos', [('quick_gelu', False), ('gelu', True)])
def test_hf_clip_matches_transformers(tmp_path, act, legacy_eos):
  ref = fx.hf_tiny(str(tmp_path), act, legacy_eos)
  loaded = clip_weights.load(str(tmp_path))
  assert loaded.config.text_pool == ('argmax' if legacy_eos else 'eos')
  pixels = fx.random_pixels(3, 32)
  ids = loaded.tokenizer(fx.PROMPTS)
  f_i, f_t, logits = _ours(loaded, pixels, ids)
  with torch.no_grad():
    out = ref(
      input_ids=torch.from_numpy(ids).long(),
      pixel_values=out_pixels(pixels),
    )
    ref_i = _features(ref.get_image_features(pixel_values=out_pixels(pixels)))
    ref_t = _features(ref.get_text_features(input_ids=torch.from_numpy(ids).long()))
  np.testing.assert_allclose(f_i, ref_i, atol=TOL)
  np.testing.assert_allclose(f_t, ref_t, atol=TOL)
  np.testing.assert_allclose(logits, out.logits_per_image.numpy(), atol=TOL)
  assert np.abs(ref_i).max() > 0.1 and np.std(logits) > 0.1  # not a trivial match


@pytest.mark.parametrize('quick_gelu', [False, True])
def test_open_clip_matches_open_clip(tmp_path, quick_gelu):
  ref = fx.open_clip_tiny(str(tmp_path), quick_gelu)
  loaded = clip_weights.load(
    str(tmp_path / 'model.pt'),
    arch=str(tmp_path / 'model.json'),
    tokenizer=str(tmp_path / 'bpe.txt.gz'),
  )
  assert loaded.config.vision_act == ('quick_gelu' if quick_gelu else 'gelu')
  pixels = fx.random_pixels(2, 32, seed=1)
  ids = loaded.tokenizer(fx.PROMPTS)
  f_i, f_t, logits = _ours(loaded, pixels, ids)
  with torch.no_grad():
    x = torch.from_numpy(pixels.transpose(0, 3, 1, 2))
    t = torch.from_numpy(ids).long()
    ref_i, ref_t = ref.encode_image(x).numpy(), ref.encode_text(t).numpy()
    ref_logits, _ = ref.get_logits(x, t)
  np.testing.assert_allclose(f_i, ref_i, atol=TOL)
  np.testing.assert_allclose(f_t, ref_t, atol=TOL)
  np.testing.assert_allclose(logits, ref_logits.numpy(), atol=TOL)


def test_bfloat16_is_close_to_float32(tmp_path):
  fx.hf_tiny(str(tmp_path))
  loaded = clip_weights.load(str(tmp_path))
  pixels, ids = fx.random_pixels(2, 32), loaded.tokenizer(fx.PROMPTS[:2])
  f32 = _ours(loaded, pixels, ids)[0]
  loaded.config = loaded.config.replace(dtype='bfloat16')
  loaded.params = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), loaded.params)
  bf16 = _ours(loaded, pixels, ids)[0].astype(np.float32)
  assert bf16.dtype == np.float32 and np.abs(bf16 - f32).max() < 0.05


@pytest.mark.parametrize('name', sorted(clip_open_clip.OPEN_CLIP_ARCHS))
def test_embedded_archs_are_open_clips_configs(name):
  import open_clip

  ref = open_clip.get_model_config(name)
  # pylint: disable-next=protected-access
  assert clip_open_clip.open_clip_config(name) == clip_open_clip._from_open_clip_cfg(
    ref, name
  )
  quick = clip_open_clip.open_clip_config(name + '-quickgelu')
  assert quick.vision_act == quick.text_act == 'quick_gelu'


def test_open_clip_arch_inferred_from_shapes():
  cfg = clip_open_clip.open_clip_config('ViT-B-16')
  state = {
    'visual.conv1.weight': np.zeros((768, 3, 16, 16)),
    'text_projection': np.zeros((512, 512)),
    **{f'visual.transformer.resblocks.{i}.ln_1.weight': 0 for i in range(12)},
    **{f'transformer.resblocks.{i}.ln_1.weight': 0 for i in range(12)},
  }
  assert clip_open_clip.open_clip_config('', state) == cfg
  state['visual.conv1.weight'] = np.zeros((768, 3, 8, 8))
  with pytest.raises(ClipWeightsError, match='shapes match none of ViT-B-32'):
    clip_open_clip.open_clip_config('', state, 'x.pt')


def _resave_without(folder, drop=None, add=None):
  path = os.path.join(folder, 'model.safetensors')
  state = load_file(path)
  if drop:
    del state[drop]
  state.update(add or {})
  save_file(state, path)


def test_load_errors_name_the_path_or_key(tmp_path):
  with pytest.raises(ClipWeightsError, match=f'{tmp_path}/nope: no such file'):
    clip_weights.load(str(tmp_path / 'nope'))
  folder = str(tmp_path / 'hf')
  fx.hf_tiny(folder)
  key = 'vision_model.encoder.layers.1.mlp.fc2.bias'
  _resave_without(folder, drop=key)
  with pytest.raises(
    ClipWeightsError, match=rf"model.safetensors: missing key '{key}'"
  ):
    clip_weights.load(folder)
  fx.hf_tiny(folder)
  _resave_without(folder, add={'logit_bias': np.zeros(1, np.float32)})
  with pytest.raises(ClipWeightsError, match="unexpected key 'logit_bias'"):
    clip_weights.load(folder)
  fx.hf_tiny(folder)
  os.remove(os.path.join(folder, 'merges.txt'))
  with pytest.raises(ValueError, match=f'{folder}/merges.txt: no such file'):
    clip_weights.load(folder)
  oc = tmp_path / 'oc'
  fx.open_clip_tiny(str(oc), nest=False)
  with pytest.raises(ClipWeightsError, match='needs a tokenizer path'):
    clip_weights.load(str(oc / 'model.pt'), arch=str(oc / 'model.json'))
  with pytest.raises(ClipWeightsError, match="unknown open_clip architecture 'ViT-X'"):
    clip_weights.load(
      str(oc / 'model.pt'), arch='ViT-X', tokenizer=str(oc / 'bpe.txt.gz')
    )
  tok = str(oc / 'bpe.txt.gz')
  with pytest.raises(
    ClipWeightsError, match="missing key 'visual.transformer.resblocks.2"
  ):
    clip_weights.load(str(oc / 'model.pt'), arch='ViT-B-32', tokenizer=tok)
  cfg = json.loads((oc / 'model.json').read_text())
  cfg['embed_dim'] = 8
  (oc / 'model.json').write_text(json.dumps(cfg))
  with pytest.raises(
    ClipWeightsError,
    match=r'parameter text/projection has shape \(24, 16\), the config needs \(24, 8\)',
  ):
    clip_weights.load(str(oc / 'model.pt'), arch=str(oc / 'model.json'), tokenizer=tok)
