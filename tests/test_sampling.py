"""The KV-cached sampler and the teacher-forced log-probs that must match it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import toy_config
from varrl_jax import policy as policy_lib
from varrl_jax import sampling
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions

PROMPTS = ["a sign that reads 'OPEN'", "a poster that reads 'HOT'", "a label: 'TEA'"]
PAPER = SamplingOptions(cfg_scale=5.0, top_k=2, top_p=0.9)  # the paper's rollouts


def _prompts(model, prompts=PROMPTS):
  return model.encode_prompts(prompts)


@pytest.fixture(scope='module')
def samplers(toy):
  _, model, _ = toy
  return {
    'plain': sampling.Sampler(model, SamplingOptions()),
    'paper': sampling.Sampler(model, PAPER),
    'cond': sampling.Sampler(
      model,
      SamplingOptions(
        cfg_scale=3.0, policy='cond', temperature=0.7, cfg_schedule='linear'
      ),
    ),
  }


@pytest.mark.parametrize('name', ['plain', 'paper', 'cond'])
def test_teacher_forced_logprobs_equal_sampler_logprobs(toy, samplers, name):
  _, model, params = toy
  s = samplers[name]
  cond = _prompts(model)
  out = s.sample(params, cond, jax.random.key(3))
  lp = sampling.logprobs(model, params, cond, out.tokens, s.opts)
  assert lp.shape == out.tokens.shape == (3, model.schedule.num_tokens)
  assert float(jnp.abs(lp - out.logprobs).max()) <= 1e-4
  assert bool(jnp.all(out.logprobs <= 0))


def test_outputs_shapes_and_scale_index(toy, samplers):
  _, model, params = toy
  cond = _prompts(model)
  out = samplers['paper'].sample(params, cond, jax.random.key(0))
  assert out.tokens.dtype == jnp.int32
  assert int(out.tokens.max()) < model.cfg.vocab_size
  np.testing.assert_array_equal(out.scale_index, model.schedule.scale_index)
  assert out.images.shape == (3, 16, 32, 3) and out.images.dtype == jnp.uint8
  # Images are the decoding of the returned tokens (up to one uint8 level:
  # the sampler's program and an eager decode round differently).
  ref = np.asarray(model.decode_tokens(params, out.tokens), np.int32)
  np.testing.assert_allclose(np.asarray(out.images, np.int32), ref, atol=1, rtol=0)


def test_same_key_same_images_and_no_retrace(toy, samplers):
  _, model, params = toy
  s = samplers['paper']
  cond = _prompts(model)
  a = s.sample(params, cond, jax.random.key(5))
  traces = s.trace_count
  b = s.sample(params, cond, jax.random.key(5))
  c = s.sample(params, cond, jax.random.key(6))
  assert s.trace_count == traces, 'same shapes must not retrace'
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_kv_cache_matches_recompute(toy, samplers):
  _, model, params = toy
  s = samplers['paper']
  cond = _prompts(model)
  a = s.sample(params, cond, jax.random.key(9))
  b = s.sample_recompute(params, cond, jax.random.key(9))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_both_cache_layouts_sample_alike(toy, samplers):
  """``dense_layout`` 'rows' (CPU: keys cached [B, G, D, L], values
  [B, G, L, D]) and 'batched' ([B, L, G, D], the TPU layout) draw the same
  tokens with the same log-probs, which equal teacher forcing."""
  config, model, params = toy
  assert model.cfg.flat_rows  # the toy model runs the CPU layout
  c = toy_config()
  c.model.dense_layout = 'batched'
  batched = build_model(c)
  assert not batched.cfg.flat_rows
  cond = _prompts(model)
  a = samplers['paper'].sample(params, cond, jax.random.key(4))
  b = sampling.Sampler(batched, PAPER).sample(params, cond, jax.random.key(4))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  lp = sampling.logprobs(batched, params, cond, b.tokens, PAPER)
  assert float(jnp.abs(lp - b.logprobs).max()) <= 1e-4


def test_branch_shares_the_prefix_and_matches_teacher_forcing(toy, samplers):
  _, model, params = toy
  s = samplers['paper']
  cond = _prompts(model)
  m, k = 1, 2
  state = s.sample_prefix(params, cond, jax.random.key(1), m)
  full = s.sample(params, cond, jax.random.key(1))
  split = model.schedule.offsets[m + 1]
  # The prefix is the full sampler's first m + 1 scales.
  np.testing.assert_array_equal(state.tokens[:, :split], full.tokens[:, :split])
  out = s.branch(params, state, jax.random.key(2), m, k)
  assert out.tokens.shape == (3 * k, model.schedule.num_tokens)
  prefix = np.asarray(out.tokens[:, :split]).reshape(3, k, -1)
  for b in range(3):
    for j in range(k):
      np.testing.assert_array_equal(prefix[b, j], state.tokens[b, :split])
  suffix = np.asarray(out.tokens[:, split:]).reshape(3, k, -1)
  assert not np.array_equal(suffix[:, 0], suffix[:, 1]), 'branches must differ'
  lp = sampling.logprobs(
    model, params, jax.tree.map(lambda x: np.repeat(x, k, 0), cond), out.tokens, s.opts
  )
  assert float(jnp.abs(lp - out.logprobs).max()) <= 1e-4


def test_branch_validates_arguments(toy, samplers):
  _, model, params = toy
  s = samplers['plain']
  cond = _prompts(model)
  with pytest.raises(ValueError, match=r'split scale m=3 out of range \[0, 2\]'):
    s.sample_prefix(params, cond, jax.random.key(0), 3)
  state = s.sample_prefix(params, cond, jax.random.key(0), 0)
  with pytest.raises(ValueError, match='num_branches must be >= 1'):
    s.branch(params, state, jax.random.key(0), 0, 0)


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  k2 = sampling.filter_logits(logits, 2, 1.0)
  kept = lambda x: (np.asarray(x)[0] > -1e30).tolist()  # noqa: E731
  assert kept(k2) == [True, True, False, False]
  # Nucleus: 0.5 < 0.7 so the 0.3 token joins; 0.8 >= 0.7 stops before 0.15.
  assert kept(sampling.filter_logits(logits, 0, 0.7)) == [True, True, False, False]
  assert kept(sampling.filter_logits(logits, 0, 0.81)) == [True, True, True, False]
  assert kept(sampling.filter_logits(logits, 0, 0.1)) == [True, False, False, False]
  assert kept(sampling.filter_logits(logits, 0, 1.0)) == [True] * 4
  # Truncation never leaves an empty set; draws stay inside the kept set.
  draws = jax.vmap(lambda k: sampling.draw(k, jnp.tile(logits, (64, 1)), PAPER))(
    jax.random.split(jax.random.key(0), 4)
  )
  assert set(np.unique(np.asarray(draws)).tolist()) <= {0, 1}


def test_greedy_is_argmax(toy):
  _, model, params = toy
  s = sampling.Sampler(model, SamplingOptions(temperature=0.0))
  cond = _prompts(model)
  a = s.sample(params, cond, jax.random.key(0))
  b = s.sample(params, cond, jax.random.key(1))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  # Every token is the argmax of the teacher-forced policy logits given the
  # tokens before it (no KV cache), and its log-prob that logit's log-softmax.
  logits = jax.jit(policy_lib.policy_logits, static_argnums=(0, 4))(
    model, params, cond, a.tokens, s.opts
  )
  np.testing.assert_array_equal(a.tokens, jnp.argmax(logits, axis=-1))
  np.testing.assert_allclose(
    a.logprobs, jax.nn.log_softmax(logits, axis=-1).max(-1), atol=1e-4
  )


@pytest.mark.parametrize(
  'kw, message',
  [
    ({'policy': 'guided'}, "config.sampling.policy must be 'cfg' or 'cond'"),
    ({'top_p': 0.0}, r'config.sampling.top_p must be in \(0, 1\]'),
    ({'temperature': -1.0}, 'config.sampling.temperature must be >= 0'),
    ({'cfg_schedule': 'cosine'}, 'config.sampling.cfg_schedule'),
  ],
)
def test_bad_options(kw, message):
  with pytest.raises(ValueError, match=message):
    SamplingOptions(**kw)


def _numpy_keep(logits, top_k, top_p):
  """Reference truncation: sort, top-k, softmax over the survivors, cumsum."""
  x = np.asarray(logits, np.float64)
  out = np.zeros(x.shape, bool)
  for i, row in enumerate(x):
    cand = np.sort(row)[::-1][: top_k or len(row)]
    probs = np.exp(cand - cand[0])
    probs /= probs.sum()
    keep = np.cumsum(probs) - probs < top_p
    out[i] = row >= cand[keep].min()
  return out


@pytest.mark.parametrize('top_k', [0, 3, 40, 250])
@pytest.mark.parametrize('top_p', [1.0, 0.9, 0.3])
def test_keep_threshold_matches_sorting(top_k, top_p):
  """Both threshold paths (lax.top_k for small k, bisection on the values'
  bits for large k and for top-p alone) keep exactly the sorted reference's
  set, ties included."""
  logits = 3.0 * jax.random.normal(jax.random.key(top_k), (8, 300))
  logits = logits.at[:, 5].set(logits[:, 7])  # a tie in every row
  logits = logits.at[0].set(jnp.round(logits[0]))  # many ties
  kept = np.asarray(sampling.filter_logits(logits, top_k, top_p)) > -1e30
  want = _numpy_keep(logits, top_k, top_p)
  np.testing.assert_array_equal(kept, want)
  assert kept.sum(-1).min() >= 1


def test_draw_frequencies_follow_the_truncated_softmax():
  probs = np.array([0.5, 0.3, 0.15, 0.05])
  logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32)), (20000, 1))
  for opts, want in [
    (SamplingOptions(), probs),
    (SamplingOptions(top_k=2), np.array([0.625, 0.375, 0, 0])),
    (SamplingOptions(top_p=0.81), np.array([0.5, 0.3, 0.15, 0]) / 0.95),
  ]:
    ids = np.asarray(sampling.draw(jax.random.key(1), logits, opts))
    freq = np.bincount(ids, minlength=4) / len(ids)
    np.testing.assert_allclose(freq, want, atol=0.015)
    assert freq[want == 0].sum() == 0


def test_draw_keeps_tokens_tied_with_the_kth_logit():
  """Small k draws among lax.top_k's candidates unless a token outside them
  ties the threshold: then (for the whole batch) the vocabulary-wide draw
  keeps every tied token, as the truncation says. Both paths follow the
  truncated softmax row by row."""
  tied = np.array([0.4, 0.2, 0.2, 0.2])  # top-2 keeps all four (a 3-way tie)
  plain = np.array([0.5, 0.3, 0.15, 0.05])  # top-2 keeps two
  rows = 20000
  for table, want in [
    ([plain], [np.array([0.625, 0.375, 0, 0])]),
    ([tied, plain], [tied, np.array([0.625, 0.375, 0, 0])]),
  ]:
    logits = jnp.log(jnp.asarray(np.repeat(np.stack(table), rows, axis=0), jnp.float32))
    ids = np.asarray(
      sampling.draw(jax.random.key(3), logits, SamplingOptions(top_k=2))
    ).reshape(len(table), rows)
    for row_ids, p in zip(ids, want):
      freq = np.bincount(row_ids, minlength=4) / rows
      np.testing.assert_allclose(freq, p, atol=0.015)
      assert freq[p == 0].sum() == 0


def test_draw_never_returns_a_removed_token_even_with_a_rounded_cumsum(monkeypatch):
  """XLA's cumsum is not sequential; a cumsum that steps down or rises where
  a token was removed must still give a kept token."""
  from varrl_jax.models import distributions

  real = jnp.cumsum

  def rounded(x, axis=-1):
    c = real(x, axis=axis)
    # Rise by a little at every position, removed ones too, and step down
    # by a little at odd ones.
    i = jnp.arange(x.shape[-1])
    return c + 1e-4 * (i % 2 == 0) - 5e-5 * (i % 2 == 1)

  monkeypatch.setattr(distributions.jnp, 'cumsum', rounded)
  logits = jax.random.normal(jax.random.key(0), (64, 100, 256))
  opts = SamplingOptions(temperature=1.0, top_k=20, top_p=0.9)
  keep = np.asarray(logits) >= np.asarray(distributions.keep_threshold(logits, 20, 0.9))
  for seed in range(4):
    ids = np.asarray(distributions.draw(jax.random.key(seed), logits, opts))
    assert np.take_along_axis(keep, ids[..., None], -1).all()
