"""The Infinity transformer against the official code
(``data/infinity_transformer_reference.npz``, tools/infinity_transformer_reference.py):
teacher-forced bit logits of every scale; the KV-cached steps against their
sampler's guided logits (CFG on logits, tau) and against our teacher-forced
pass; the bitwise distribution (log-prob, entropy, their top-k / top-p per
bit); the strict state_dict mapping."""

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varrl_jax.convert.random_state import random_state_dict
from varrl_jax.models.infinity import transformer_weights as tw
from varrl_jax.models.infinity.bitwise import Bitwise, bit_filter
from varrl_jax.models.infinity.layers import InfinityConfig, preset
from varrl_jax.models.infinity.transformer import InfinityTransformer, init_cache
from varrl_jax.models.schedule import ScaleSchedule
from varrl_jax.models.var_official.errors import ConversionError
from varrl_jax.policy import SamplingOptions, guide

REF = pathlib.Path(__file__).parent / 'data' / 'infinity_transformer_reference.npz'
TOL = 1e-4
ROPE_GRID_1M = {1.25: (70, 56)}  # their '1M' last grid of h/w = 1.25


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision('highest'):
    yield


@functools.cache
def reference() -> dict:
  with np.load(REF) as z:
    return {k: z[k] for k in z.files}


@functools.cache
def setup():
  ref = reference()
  conf = json.loads(str(ref['config']))
  m = conf['model']
  grids = tuple((h, w) for _, h, w in conf['schedule'])
  sched = ScaleSchedule.create(grids, (grids[-1][0] * 16, grids[-1][1] * 16), 16)
  cfg = InfinityConfig(
    schedule=sched,
    rope_grid=ROPE_GRID_1M[conf['h_div_w']],
    bits=conf['bits'],
    depth=m['depth'],
    embed_dim=m['embed_dim'],
    num_heads=m['num_heads'],
    mlp_ratio=m['mlp_ratio'],
    text_channels=m['text_channels'],
    text_maxlen=m['text_maxlen'],
  )
  shapes = json.loads(str(ref['param_shapes']))
  sd = random_state_dict(shapes, seed=conf['weight_seed'])
  buffers = {
    k: np.zeros(s, np.float32) for k, s in json.loads(str(ref['buffer_shapes'])).items()
  }
  params = tw.params_from_state_dict({**sd, **buffers}, cfg, 'ref.pth')
  return cfg, conf, sd, params


def _text():
  ref = reference()
  mask = np.arange(ref['text'].shape[1])[None] < ref['text_lens'][:, None]
  return jnp.asarray(ref['text']), jnp.asarray(mask)


def _inputs():
  x = reference()['ar_inputs']  # [B, L - 1, d]; our slot of scale 0 is ignored
  return jnp.asarray(np.concatenate([np.zeros_like(x[:, :1]), x], axis=1))


@pytest.mark.parametrize('flat_rows', [False, True])
def test_teacher_forced_bit_logits_match_official(flat_rows):
  """Both dense layouts (`models/rows.py`): [B, T, C] and [B T, C] rows."""
  cfg, _, _, params = setup()
  cfg = dataclasses.replace(cfg, flat_rows=flat_rows)
  model = InfinityTransformer(cfg)
  text, mask = _text()
  logits = jax.jit(model.apply)(params, text, mask, _inputs())
  want = reference()['tf_logits'].reshape(logits.shape)
  for s in range(cfg.schedule.num_scales):
    a, b = cfg.schedule.span(s)
    err = float(np.abs(np.asarray(logits[:, a:b]) - want[:, a:b]).max())
    print(f'scale {s}: max |bit logits - official| = {err:.2e}')
    assert err <= TOL, (s, err)
  # Not vacuous: the two prompts differ, and a prefix of scales is causal.
  assert float(np.abs(want[0] - want[1]).max()) > 0.1
  head = model.apply(params, text, mask, _inputs()[:, :14], num_scales=3)
  np.testing.assert_allclose(head, logits[:, :14], atol=TOL)


@pytest.mark.parametrize('flat_rows', [False, True])
def test_cached_steps_match_official_sampler_and_teacher_forcing(flat_rows):
  """Their autoregressive_infer_cfg: per scale, the guided logits
  (cfg l_c + (1 - cfg) l_u) / tau fed to their top-k/top-p sampler."""
  cfg, conf, _, params = setup()
  cfg = dataclasses.replace(cfg, flat_rows=flat_rows)
  model = InfinityTransformer(cfg)
  ref = reference()
  text, mask = _text()
  b = text.shape[0]
  null = model.apply(params, mask, method=model.null_text)
  ctx = model.apply(
    params,
    jnp.concatenate([text, null]),
    jnp.concatenate([mask, mask]),
    method=model.prefill,
  )
  cache = init_cache(cfg, 2 * b, text.shape[1])
  inputs = _inputs()
  step = jax.jit(functools.partial(model.apply, method=model.step), static_argnames='s')
  opts = SamplingOptions(
    cfg_scale=conf['sampler']['cfg'], temperature=conf['sampler']['tau']
  )
  got_cond = []
  for s in range(cfg.schedule.num_scales):
    lo, hi = cfg.schedule.span(s)
    x = jnp.concatenate([inputs[:, lo:hi]] * 2)
    logits, cache = step(params, x, s=s, ctx=ctx, cache=cache)
    guided = guide(logits[:b], logits[b:], opts.cfg_scale) / opts.temperature
    err = float(np.abs(np.asarray(guided) - ref['ar_guided'][:, lo:hi]).max())
    print(f'scale {s}: max |guided - official sampler| = {err:.2e}')
    assert err <= 2 * TOL, (s, err)
    got_cond.append(logits[:b])
  tf = reference()['tf_logits'].reshape(b, -1, cfg.bits, 2)
  np.testing.assert_allclose(jnp.concatenate(got_cond, 1), tf, atol=TOL)


def test_bit_filter_matches_official_top_k_top_p():
  _, conf, _, _ = setup()
  ref = reference()
  smp = conf['sampler']
  out = bit_filter(jnp.asarray(ref['ar_guided']), smp['top_k'], smp['top_p'])
  removed = np.asarray(out) == np.finfo(np.float32).min
  np.testing.assert_array_equal(removed, ref['ar_removed'])
  assert 0.05 < ref['ar_removed'].mean() < 0.45  # the filter did act
  # Their sampled bits never fall on a removed class.
  bits = ref['ar_bits'].astype(np.int64)
  assert not np.take_along_axis(ref['ar_removed'], bits[..., None], -1).any()


def test_bitwise_logprob_entropy_and_draw():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 6, 2)).astype(np.float32) * 2
  bits = rng.integers(0, 2, size=(3, 5, 6)).astype(np.int8)
  dist = Bitwise(bits=6)
  assert dist.token_shape == (6,) and dist.token_dtype == jnp.int8
  lp, ent = dist.logprobs_and_entropy(jnp.asarray(logits), jnp.asarray(bits))
  # Direct: p(bit = 1) = sigmoid(l1 - l0), per bit; sums over the d bits.
  p1 = 1 / (1 + np.exp(-(logits[..., 1] - logits[..., 0]).astype(np.float64)))
  want_lp = np.where(bits == 1, np.log(p1), np.log1p(-p1)).sum(-1)
  want_ent = -(p1 * np.log(p1) + (1 - p1) * np.log1p(-p1)).sum(-1)
  np.testing.assert_allclose(lp, want_lp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent, want_ent, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    dist.token_logprobs(jnp.asarray(logits), jnp.asarray(bits)), lp
  )
  greedy = dist.draw(
    jax.random.key(0), jnp.asarray(logits), SamplingOptions(temperature=0.0)
  )
  np.testing.assert_array_equal(greedy, logits.argmax(-1))
  # top-p 0.9: a bit whose minority class has p <= 0.1 is always the argmax.
  opts = SamplingOptions(top_p=0.9)
  draws = jax.vmap(lambda k: dist.draw(k, jnp.asarray(logits), opts))(
    jax.random.split(jax.random.key(1), 200)
  )
  sure = np.minimum(p1, 1 - p1) <= 0.1
  assert np.all(np.asarray(draws)[:, sure] == logits.argmax(-1)[sure])
  free = np.abs(np.asarray(draws).mean(0) - p1)[~sure]
  assert free.max() < 0.15  # the rest are drawn with their own probability


def test_state_dict_roundtrip_both_namings():
  cfg, _, sd, params = setup()
  for chunks in (1, 2, 4):
    back = tw.state_dict_from_params(params, cfg, block_chunks=chunks)
    assert set(back) == set(tw.expected_state_shapes(cfg, chunks))
    again = tw.params_from_state_dict(back, cfg, 'x.pth')
    jax.tree.map(np.testing.assert_array_equal, again, params)
  assert set(tw.state_dict_from_params(params, cfg, 2)) == set(sd)


@pytest.mark.parametrize(
  'edit, match',
  [
    (lambda sd: sd.pop('head.bias'), 'ref.pth: head.bias: missing'),
    (
      lambda sd: sd.__setitem__('head.extra', np.zeros(1)),
      'ref.pth: head.extra: not a parameter',
    ),
    (
      lambda sd: sd.__setitem__('block_chunks.1.module.0.sa.q_bias', np.zeros(3)),
      r'ref.pth: block_chunks.1.module.0.sa.q_bias: shape \(3,\), expected \(64,\)',
    ),
    (
      lambda sd: sd.__setitem__('cfg_uncond', np.zeros((4, 256))),
      r'ref.pth: cfg_uncond: shape \(4, 256\), expected \(>= 8, 256\)',
    ),
  ],
)
def test_mapping_errors_name_the_key(edit, match):
  cfg, _, sd, _ = setup()
  sd = dict(sd)
  edit(sd)
  with pytest.raises(ConversionError, match=match):
    tw.params_from_state_dict(sd, cfg, 'ref.pth')


def test_presets_follow_their_constructor():
  sched = ScaleSchedule.create(((1, 1), (2, 2)), (32, 32), 16)
  b2 = preset('infinity_2b', sched, (64, 64))
  assert (b2.depth, b2.embed_dim, b2.num_heads, b2.head_dim) == (32, 2048, 16, 128)
  assert (b2.mlp_dim, b2.pool_heads, b2.pool_head_dim, b2.bits) == (8192, 16, 128, 32)
  b8 = preset('infinity_8b', sched, (64, 64))
  assert (b8.depth, b8.embed_dim, b8.num_heads, b8.head_dim) == (40, 3584, 28, 128)
  assert (b8.mlp_dim, b8.pool_heads, b8.pool_head_dim, b8.bits) == (14336, 16, 224, 56)
  with pytest.raises(ValueError, match='text_channels=64'):
    preset('infinity_2b', sched, (64, 64), text_channels=64)
