"""The Infinity BSQ tokenizer port: schedules, resizes and patchify against
torch, the state_dict conversion, and parity with their code through
``data/infinity_vae_reference.npz`` (written by
``tools/infinity_vae_reference.py`` from their ``bsq_vae/`` and
``bitwise_self_correction.py`` with `random_state_dict` weights, seed 0).

Tolerances (float32 on CPU; measured max abs errors in the comments): the
encoder output (|f| <= 3.3) and the decoded images within 1e-4 absolute,
f_hat and the transformer inputs within 1e-6; bits exactly, also end to end
from the images (every bit there is >= 2e-5 from its sign flip, the
encoder's error ~6e-6).
"""

import functools
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from varrl_jax.convert import torch_io
from varrl_jax.convert.random_state import random_state_dict
from varrl_jax.models import resize
from varrl_jax.models.infinity import bsq_quantizer as bq
from varrl_jax.models.infinity import schedules
from varrl_jax.models.infinity import vae_weights as weights
from varrl_jax.models.infinity.bsq_vae import BSQVAE, INFINITY_2B_VAE, INFINITY_8B_VAE
from varrl_jax.models.var_official.errors import ConversionError

REF_PATH = pathlib.Path(__file__).parent / 'data' / 'infinity_vae_reference.npz'
NET_TOL = 1e-4  # encoder / decoder outputs
CODE_TOL = 1e-6  # f_hat and next-scale inputs (sums of +-1/sqrt(d) codes)


@functools.cache
def _ref():
  return dict(np.load(REF_PATH))


def _cfg(name: str) -> dict:
  return json.loads(str(_ref()['config']))[name]


def _module(name: str) -> BSQVAE:
  cfg = _cfg(name)
  vae = cfg['vae']
  return BSQVAE(
    codebook_dim=vae['codebook_dim'],
    ch=cfg['shrink']['base_ch'],
    ch_mult=tuple(vae['encoder_ch_mult']),
    num_res_blocks=cfg['shrink']['num_res_blocks'],
    patch_size=vae['patch_size'],
    apply_spatial_patchify=bool(cfg['apply_spatial_patchify']),
  )


@functools.cache
def _state_dict(name: str) -> dict:
  shapes = json.loads(str(_ref()[f'param_shapes_{name}']))
  return random_state_dict({k: tuple(v) for k, v in shapes.items()}, seed=0)


@functools.cache
def _params(name: str) -> dict:
  return weights.params_from_state_dict(_state_dict(name), _module(name), name)


def _vae_grids(name: str):
  cfg = _cfg(name)
  grids = tuple(tuple(g) for g in cfg['grids'])
  return schedules.vae_grids(grids, bool(cfg['apply_spatial_patchify']))


@functools.cache
def _jitted(vae_name: str, method: str):
  module = _module(vae_name)
  return jax.jit(lambda p, x: module.apply(p, x, method=method))


def _split(tokens_bld: np.ndarray, grids) -> list[np.ndarray]:
  out, start = [], 0
  for h, w in grids:
    out.append(
      tokens_bld[:, start : start + h * w].reshape(-1, h, w, tokens_bld.shape[-1])
    )
    start += h * w
  return out


def _flat(per_scale) -> np.ndarray:
  return np.concatenate(
    [np.asarray(x).reshape(x.shape[0], -1, x.shape[-1]) for x in per_scale], 1
  )


# --- schedules, resizes, patchify ----------------------------------------------


def test_official_schedules():
  one = schedules.scale_schedule(1.0, '1M')
  assert len(one) == 13 and one[-1] == (64, 64) and one[9] == (32, 32)
  assert schedules.pixel_size(1.0, '1M') == (1024, 1024)
  assert schedules.scale_schedule(1.0, '0.06M') == (
    (1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)
  )  # fmt: skip
  assert schedules.pixel_size(1.0, '0.06M') == (256, 256)
  assert schedules.pixel_size(1.0, '0.25M') == (512, 512)
  assert len(schedules.scale_schedule(1.0, '0.25M')) == 10
  assert schedules.pixel_size(1.0, '0.60M') == (768, 768)
  # Inverse ratios are the transposes, keyed int(1 / r * 1000) / 1000.
  assert schedules.scale_schedule(0.5, '1M')[-1] == (45, 90)
  assert schedules.scale_schedule(0.75, '1M')[-1] == (54, 72)
  assert len(schedules.H_DIV_W_TEMPLATES) == 15
  assert schedules.nearest_template(1.27) == 1.25
  assert schedules.vae_grids(((1, 1), (2, 3)), True) == ((2, 2), (4, 6))
  with pytest.raises(ValueError, match='h_div_w=1.3'):
    schedules.scale_schedule(1.3)
  with pytest.raises(ValueError, match="pn='2M'"):
    schedules.scale_schedule(1.0, '2M')


def _torch_trilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Their 'trilinear' at t = 1 on the n_in unit vectors along H."""
  x = torch.eye(n_in).reshape(n_in, 1, 1, n_in, 1)
  y = F.interpolate(x, size=(1, n_out, 1), mode='trilinear')
  return y.reshape(n_in, n_out).T.numpy()


def test_bilinear_and_area_match_torch():
  sides = sorted({s for g in schedules.scale_schedule(2.0, '1M') for s in g})
  for n_out in (16, 22, 11, 64, 45):
    for n in sides[:10]:
      for a, b in ((n, n_out), (n_out, n)):
        np.testing.assert_array_equal(
          bq.torch_bilinear_matrix(a, b), _torch_trilinear_matrix(a, b), f'{a}->{b}'
        )
  x = np.random.default_rng(0).standard_normal((2, 3, 1, 22, 11), np.float32)
  got = bq.bilinear(jnp.asarray(x[:, :, 0].transpose(0, 2, 3, 1)), (10, 5))
  want = F.interpolate(torch.from_numpy(x), size=(1, 10, 5), mode='trilinear')
  np.testing.assert_allclose(
    got, want[:, :, 0].numpy().transpose(0, 2, 3, 1), atol=1e-6
  )
  got = bq.area(jnp.asarray(x[:, :, 0].transpose(0, 2, 3, 1)), (6, 3))
  want = F.interpolate(torch.from_numpy(x), size=(1, 6, 3), mode='area')
  np.testing.assert_allclose(
    got, want[:, :, 0].numpy().transpose(0, 2, 3, 1), atol=1e-6
  )
  assert resize.torch_area_matrix(22, 6).shape == (6, 22)


def test_patchify_matches_pixel_shuffle():
  x = np.random.default_rng(1).integers(0, 2, (2, 3, 5, 4 * 7))  # [B, h, w, 4d]
  want = F.pixel_shuffle(torch.from_numpy(x).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
  got = bq.unpatchify_bits(jnp.asarray(x))
  np.testing.assert_array_equal(got, want.numpy())
  np.testing.assert_array_equal(bq.patchify(got), x)


def test_bits_to_codes():
  bits = jnp.array([[1, 0, 0, 1]])
  np.testing.assert_allclose(
    bq.bits_to_codes(bits), [[0.5, -0.5, -0.5, 0.5]], atol=1e-7
  )
  b, q = bq.quantize(jnp.array([[3.0, -1.0, 0.0, 2.0]]))
  np.testing.assert_array_equal(b, [[1, 0, 0, 1]])  # sign(0) -> bit 0
  np.testing.assert_allclose(q, [[0.5, -0.5, -0.5, 0.5]], atol=1e-7)
  u8 = bq.to_uint8(jnp.array([-1.0, 1.0, 0.0, 0.999]))
  np.testing.assert_array_equal(u8, [0, 255, 127, 254])  # truncation


# --- parity with their code -----------------------------------------------------


@pytest.mark.parametrize('name', ('a', 'p'))
def test_architecture_matches_their_state_dict(name):
  shapes = json.loads(str(_ref()[f'param_shapes_{name}']))
  expected = weights.expected_state_shapes(_module(name))
  assert expected == {k: tuple(v) for k, v in shapes.items()}
  buffers = set(json.loads(str(_ref()[f'buffers_{name}'])))
  assert buffers == set(weights.IGNORED_BUFFERS)


@pytest.mark.parametrize('name', ('2b', '8b'))
def test_presets_match_official_sizes(name):
  preset = {'2b': INFINITY_2B_VAE, '8b': INFINITY_8B_VAE}[name]
  shapes = json.loads(str(_ref()[f'param_shapes_{name}']))
  expected = weights.expected_state_shapes(BSQVAE(**preset))
  assert expected == {k: tuple(v) for k, v in shapes.items()}


@pytest.mark.parametrize('name', ('a', 'b', 'p'))
def test_encode_matches(name):
  ref, vae = _ref(), _cfg(name)['vae_from']
  img = ref[f'{name}_img_u8'].astype(np.float32) / 127.5 - 1
  h = _jitted(vae, 'encode')(_params(vae), img)
  np.testing.assert_allclose(h, ref[f'{name}_h'], atol=NET_TOL, rtol=0)  # ~6e-6
  patch = bool(_cfg(name)['apply_spatial_patchify'])
  grids = _vae_grids(name)
  # From their encoder output: exact bits, close inputs.
  bits, f_hat, inputs = bq.encode_latent(jnp.asarray(ref[f'{name}_h']), grids, patch)
  np.testing.assert_array_equal(_flat(bits), ref[f'{name}_bits'])
  np.testing.assert_allclose(_flat(inputs), ref[f'{name}_x_blc'], atol=CODE_TOL)
  if f'{name}_z' in ref:  # vae.encode's own loop: same bits, same f_hat
    np.testing.assert_array_equal(_flat(bits), ref[f'{name}_bits_encode'])
    np.testing.assert_allclose(f_hat, ref[f'{name}_z'], atol=CODE_TOL)
  # End to end from the image: every bit is >= 2e-5 from flipping.
  assert ref[f'{name}_margin_S'].min() > 1e-5
  bits_e2e, _, _ = bq.encode_latent(h, grids, patch)
  np.testing.assert_array_equal(_flat(bits_e2e), ref[f'{name}_bits'])


def test_encode_to_tokens_end_to_end():
  ref, module = _ref(), _module('a')
  img = ref['b_img_u8'].astype(np.float32) / 127.5 - 1
  grids = tuple(tuple(g) for g in _cfg('b')['grids'])
  tokens, _, inputs = jax.jit(
    lambda p, x: module.apply(p, x, grids, method='encode_to_tokens')
  )(_params('a'), img)
  np.testing.assert_array_equal(_flat(tokens), ref['b_bits'])
  np.testing.assert_allclose(_flat(inputs), ref['b_x_blc'], atol=1e-5)


@pytest.mark.parametrize('name', ('a', 'p'))
def test_decode_from_bits_matches(name):
  ref, cfg = _ref(), _cfg(name)
  patch = bool(cfg['apply_spatial_patchify'])
  grids = tuple(tuple(g) for g in cfg['grids'])
  vae_grids = _vae_grids(name)
  tokens = _split(ref[f'{name}_dec_bits'], grids)
  f_hat = bq.fhat_from_tokens(tokens, vae_grids[-1], patch)
  np.testing.assert_allclose(f_hat, ref[f'{name}_dec_fhat'], atol=CODE_TOL)
  # Their sampler feeds scale s + 1 with up(sum of codes of scales <= s).
  inputs = []
  for s in range(len(grids) - 1):
    f_s = bq.fhat_from_tokens(tokens[: s + 1], vae_grids[-1], patch)
    inputs.append(bq.next_scale_input(f_s, vae_grids[s + 1], patch))
  np.testing.assert_allclose(_flat(inputs), ref[f'{name}_dec_x_blc'], atol=CODE_TOL)
  img = _jitted(name, 'decode_tokens')(_params(name), tokens)
  np.testing.assert_allclose(img, ref[f'{name}_dec_img'], atol=NET_TOL, rtol=0)  # ~5e-6
  np.testing.assert_array_equal(
    bq.to_uint8(ref[f'{name}_dec_img']), ref[f'{name}_dec_u8']
  )
  assert np.abs(bq.to_uint8(img).astype(int) - ref[f'{name}_dec_u8']).max() <= 1


def test_token_depth():
  assert _module('p').token_depth == 4 * 8 and _module('a').token_depth == 16


# --- conversion errors ------------------------------------------------------------


def test_state_dict_roundtrip_and_plain_spelling():
  sd = _state_dict('a')
  module = _module('a')
  back = weights.state_dict_from_params(_params('a'), module)
  assert set(back) == set(sd) | set(weights.IGNORED_BUFFERS)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v, k)
  # load_cnn's plain flux spelling, inside a {'vae': ...} checkpoint.
  unwrap = re.compile(r'\.(conv|norm)\.(weight|bias)$')
  plain = {'vae.' + unwrap.sub(r'.\2', k): v for k, v in back.items()}
  assert 'vae.encoder.conv_in.weight' in plain
  again = weights.params_from_state_dict(weights.vae_state_dict(plain), module, 'x')
  jax.tree.map(np.testing.assert_array_equal, again, _params('a'))


def test_reads_their_checkpoint_layout(tmp_path):
  # Their .pth is torch.save({'vae': state_dict, ...}); read without torch.
  sd = weights.state_dict_from_params(_params('p'), _module('p'))
  path = tmp_path / 'infinity_vae_small.pth'
  torch.save({'vae': {k: torch.from_numpy(v) for k, v in sd.items()}, 'step': 3}, path)
  flat = torch_io.load_state_dict(path)
  params = weights.params_from_state_dict(
    weights.vae_state_dict(flat), _module('p'), str(path)
  )
  jax.tree.map(np.testing.assert_array_equal, params, _params('p'))


def test_conversion_errors():
  module, sd = _module('a'), dict(_state_dict('a'))
  key = 'decoder.up.1.upsample.conv.conv.weight'
  with pytest.raises(ConversionError, match=f'^vae.pth: {key}: missing from'):
    weights.params_from_state_dict(
      {k: v for k, v in sd.items() if k != key}, module, 'vae.pth'
    )
  bad = dict(
    sd, **{'encoder.conv_out.conv.weight': np.zeros((16, 64, 1, 1), np.float32)}
  )
  with pytest.raises(
    ConversionError,
    match=r'conv_out.conv.weight: shape \(16, 64, 1, 1\), expected \(16, 64, 3, 3\)',
  ):
    weights.params_from_state_dict(bad, module, 'vae.pth')
  with pytest.raises(
    ConversionError, match='encoder.down.5.block.0.conv1.conv.weight: not a'
  ):
    weights.params_from_state_dict(
      dict(sd, **{'encoder.down.5.block.0.conv1.conv.weight': sd[key]}),
      module,
      'vae.pth',
    )
  dup = dict(sd, **{'encoder.conv_in.weight': sd['encoder.conv_in.conv.weight']})
  with pytest.raises(
    ConversionError, match='conv_in.conv.weight: also given as encoder.conv_in.weight'
  ):
    weights.params_from_state_dict(dup, module, 'vae.pth')
  # A state dict of the 8B-like tokenizer does not fit the 2B-like module.
  with pytest.raises(ConversionError, match='shape'):
    weights.params_from_state_dict(_state_dict('p'), module, 'p.pth')
