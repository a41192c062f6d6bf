"""The official VAR VQ-VAE port: resize kinds against torch, the state_dict
conversion, and parity with their code through ``data/var_reference.npz``
(written by ``tools/var_reference.py`` from their ``models/`` with
`random_state_dict` weights, seed 0)."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from varrl_jax.convert.random_state import random_state_dict
from varrl_jax.models import resize
from varrl_jax.models.var_official import vqvae_weights as weights
from varrl_jax.models.var_official.errors import ConversionError
from varrl_jax.models.var_official.vqvae import VarVQVAE, next_scale_input, phi_index

REF_PATH = pathlib.Path(__file__).parent / 'data' / 'var_reference.npz'
VAR_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 13)
PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8)
TOL = 1e-4


def _torch_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
  """torch's resize of the n_in unit vectors along H: its [n_out, n_in] matrix."""
  x = torch.eye(n_in).reshape(n_in, 1, n_in, 1)
  extra = {} if mode == 'area' else {'align_corners': False}
  y = F.interpolate(x, size=(n_out, 1), mode=mode, **extra)
  return y.reshape(n_in, n_out).T.numpy()


@pytest.mark.parametrize('target', (16, 8))
def test_resize_kinds_match_torch(target):
  for n in VAR_SIZES:
    # bicubic up to (and, for 10 and 13 -> 8, down to) the target; identical.
    np.testing.assert_array_equal(
      resize.bicubic_matrix(n, target), _torch_matrix(n, target, 'bicubic')
    )
    for n_in, n_out in ((target, n), (n, target)):
      np.testing.assert_array_equal(
        resize.torch_area_matrix(n_in, n_out), _torch_matrix(n_in, n_out, 'area')
      )
  # Through `resize` on data, both axes at once ([B, C, H, W] there).
  x = np.random.default_rng(0).standard_normal((2, 4, target, target), np.float32)
  for n in (1, 5, 10, 13):
    want = F.interpolate(torch.from_numpy(x), size=(n, n), mode='area').numpy()
    got = resize.resize(jnp.asarray(x.transpose(0, 2, 3, 1)), (n, n), 'torch_area')
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-6)
    small = x[:, :, :n, :n]
    want = F.interpolate(
      torch.from_numpy(small), size=(target,) * 2, mode='bicubic', align_corners=False
    ).numpy()
    got = resize.resize(
      jnp.asarray(small.transpose(0, 2, 3, 1)), (target,) * 2, 'bicubic'
    )
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-5)


def test_torch_area_is_whole_cell_mean():
  np.testing.assert_allclose(resize.torch_area_matrix(16, 10)[1, 1:4], 1 / 3)
  assert (resize.torch_area_matrix(16, 10)[1] > 0).sum() == 3
  assert resize.area_matrix(16, 10)[1, 2] == pytest.approx(0.625)


def _small_module() -> VarVQVAE:
  return VarVQVAE(vocab_size=256, z_channels=32, ch=32, patch_nums=PATCH_NUMS)


@functools.cache
def _small_state_dict() -> dict[str, np.ndarray]:
  return random_state_dict(weights.expected_state_shapes(_small_module()), seed=0)


def test_state_dict_round_trip_and_buffer_ignored():
  module = _small_module()
  sd = _small_state_dict()
  variables = weights.vqvae_params_from_state_dict(
    {**sd, 'quantize.ema_vocab_hit_SV': np.zeros((7, 256))}, module, 'small.pth'
  )
  assert variables['params']['encoder']['conv_in']['kernel'].shape == (3, 3, 3, 32)
  back = weights.vqvae_state_dict_from_params(variables, module)
  assert back.pop('quantize.ema_vocab_hit_SV').shape == (7, 256)
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_default_layout_is_vae_ch160v4096z32():
  shapes = weights.expected_state_shapes(VarVQVAE())
  assert len(shapes) == 323
  assert shapes['quantize.embedding.weight'] == (4096, 32)
  assert shapes['decoder.conv_in.weight'] == (640, 32, 3, 3)
  assert shapes['encoder.down.4.attn.1.qkv.weight'] == (1920, 640, 1, 1)
  assert shapes['quantize.quant_resi.qresi_ls.3.weight'] == (32, 32, 3, 3)
  assert sum(int(np.prod(s)) for s in shapes.values()) == 108_948_355


@pytest.mark.parametrize(
  'share, key',
  [
    (0, 'quantize.quant_resi.1.weight'),  # PhiNonShared: one per scale
    (1, 'quantize.quant_resi.qresi.weight'),  # PhiShared
    # Two scales pick phis 0 and 3 only; theirs holds all four all the same.
    (4, 'quantize.quant_resi.qresi_ls.1.weight'),
  ],
)
def test_phi_keys_of_sharing_modes(share, key):
  module = VarVQVAE(
    vocab_size=16, ch=32, ch_mult=(1, 1), share_quant_resi=share, patch_nums=(1, 2)
  )
  assert key in weights.expected_state_shapes(module)


@pytest.mark.parametrize(
  'edit, key, match',
  [
    (lambda sd: sd.pop('quant_conv.bias'), 'quant_conv.bias', 'missing'),
    (
      lambda sd: sd.update({'encoder.mid.attn_2.qkv.weight': np.zeros(1)}),
      'encoder.mid.attn_2.qkv.weight',
      'not a parameter',
    ),
    (
      lambda sd: sd.update({'quantize.embedding.weight': np.zeros((32, 256))}),
      'quantize.embedding.weight',
      r'shape \(32, 256\), expected \(256, 32\)',
    ),
  ],
)
def test_conversion_errors(edit, key, match):
  sd = dict(_small_state_dict())
  edit(sd)
  with pytest.raises(ConversionError, match=match) as info:
    weights.vqvae_params_from_state_dict(sd, _small_module(), 'vae.pth')
  assert (info.value.source, info.value.key) == ('vae.pth', key)
  assert str(info.value).startswith(f'vae.pth: {key}: ')
  assert '\n' not in str(info.value)


# --- parity with the official code ---------------------------------------


@pytest.fixture(scope='module')
def ref():
  if not REF_PATH.exists():
    pytest.skip(f'{REF_PATH} not generated (tools/var_reference.py)')
  return dict(np.load(REF_PATH))


def test_phi_index_matches_theirs(ref):
  counts = sorted(
    int(k.removeprefix('phi_index_SN')) for k in ref if 'phi_index_SN' in k
  )
  assert counts == list(range(2, 21))
  for sn in counts:
    got = [phi_index(si, sn, 4) for si in range(sn)]
    assert got == ref[f'phi_index_SN{sn}'].tolist(), sn
  # The real-arithmetic ties (2/9, 1/2, 7/9) resolve as their float64 did.
  for tie in json.loads(str(ref['phi_ties'])):
    assert phi_index(tie['si'], tie['SN'], 4) == tie['picked'], tie


@pytest.fixture(scope='module')
def ours(ref):
  config = json.loads(str(ref['config']))
  vae = config['vae']
  module = VarVQVAE(
    vocab_size=vae['vocab_size'],
    z_channels=vae['z_channels'],
    ch=vae['ch'],
    share_quant_resi=vae['share_quant_resi'],
    patch_nums=tuple(vae['v_patch_nums']),
  )
  shapes = {k: tuple(v[0]) for k, v in json.loads(str(ref['param_shapes_vae'])).items()}
  assert shapes == weights.expected_state_shapes(module)
  sd = random_state_dict(shapes, seed=config['seed'])
  variables = weights.vqvae_params_from_state_dict(sd, module, str(REF_PATH))

  @jax.jit
  def run(variables, img):
    f = module.apply(variables, img, method='encode')
    ids = module.apply(variables, f, method='quantize')
    f_hat_s = [
      module.apply(variables, ids[: s + 1], method='fhat_from_scales')
      for s in range(len(ids))
    ]
    next_in = [
      module.apply(variables, f_hat_s[s], s, method='next_input')
      for s in range(len(ids) - 1)
    ]
    rec = module.apply(variables, f_hat_s[-1], method='decode')
    return dict(f=f, ids=ids, f_hat_s=f_hat_s, next_in=next_in, rec=rec)

  with jax.default_matmul_precision('highest'):
    return run(variables, jnp.asarray(ref['img'].transpose(0, 2, 3, 1)))


def _nhwc(x: np.ndarray) -> np.ndarray:
  return x.transpose(0, 2, 3, 1)


def _max_diff(a, b) -> float:
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_parity_encode_and_ids(ref, ours):
  assert _max_diff(ours['f'], _nhwc(ref['vae_f'])) <= TOL
  b = ref['vae_idx_BL'].shape[0]
  want = np.split(ref['vae_idx_BL'], np.cumsum([p * p for p in PATCH_NUMS])[:-1], 1)
  for s, (got, w) in enumerate(zip(ours['ids'], want)):
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got).reshape(b, -1), w, err_msg=str(s))


def test_parity_fhat_decode_and_next_inputs(ref, ours):
  for s, f_hat in enumerate(ours['f_hat_s']):
    assert _max_diff(f_hat, _nhwc(ref['vae_fhat_S'][s])) <= TOL, s
  assert _max_diff(ours['f_hat_s'][-1], _nhwc(ref['vae_fhat'])) <= TOL
  assert _max_diff(ours['rec'], _nhwc(ref['vae_rec'])) <= TOL
  b, c = ref['vae_var_input'].shape[0], ref['vae_var_input'].shape[-1]
  got = np.concatenate([np.asarray(x).reshape(b, -1, c) for x in ours['next_in']], 1)
  assert _max_diff(got, ref['vae_var_input']) <= TOL
  # The plain function is the method.
  np.testing.assert_array_equal(
    next_scale_input(ours['f_hat_s'][2], 4), ours['next_in'][2]
  )
