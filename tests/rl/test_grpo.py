"""GRPO: equations against their definitions, and the jitted step on the toy model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varrl_jax import sampling
from varrl_jax.policy import SamplingOptions
from varrl_jax.rl import grpo, panw, vmr

OPTS = SamplingOptions(cfg_scale=3.0, top_k=4, top_p=0.9)


def test_group_advantages_definition():
  r = np.array([[1.0, 0.0, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]])
  a = np.asarray(grpo.group_advantages(r, 1e-4))
  expected = (r[0] - r[0].mean()) / (r[0].std() + 1e-4)
  np.testing.assert_allclose(a[0], expected, rtol=1e-5)
  np.testing.assert_array_equal(a[1], 0.0)  # a group with equal rewards: no signal
  # Exactly zero even where float32 could not represent the mean exactly.
  np.testing.assert_array_equal(
    grpo.group_advantages(np.full((1, 16), -0.6, np.float32)), 0.0
  )


def test_token_terms_definition():
  logp = jnp.log(jnp.array([[0.5, 0.5, 0.2]]))
  old = jnp.log(jnp.array([[0.25, 0.5, 0.4]]))
  ref = jnp.log(jnp.array([[0.5, 0.25, 0.2]]))
  surr, kl, ratio, clipped = grpo.token_terms(logp, old, ref, jnp.array([1.0]), 0.2)
  np.testing.assert_allclose(ratio, [[2.0, 1.0, 0.5]], rtol=1e-6)
  # A > 0: min(rho A, clip(rho) A) = [1.2, 1.0, 0.5]; clipped where rho > 1 + eps.
  np.testing.assert_allclose(surr, [[1.2, 1.0, 0.5]], rtol=1e-6)
  np.testing.assert_array_equal(clipped, [[1.0, 0.0, 0.0]])
  r = np.log([0.5, 0.25, 0.2]) - np.log([0.5, 0.5, 0.2])
  np.testing.assert_allclose(kl, [np.exp(r) - r - 1], rtol=1e-5, atol=1e-7)
  assert float(kl[0, 0]) == 0.0 and float(kl[0, 2]) == 0.0
  # A < 0: the pessimistic bound clips low ratios.
  surr_neg, *_ = grpo.token_terms(logp, old, ref, jnp.array([-1.0]), 0.2)
  np.testing.assert_allclose(surr_neg, [[-2.0, -1.0, -0.8]], rtol=1e-6)


def test_decoupled_objective_weights_the_surrogate_not_the_kl():
  """surr_i = w_i min(rho A, clip(rho) A), w = pi_old / pi_behaviour
  (stop-gradient, optionally capped); the KL term is unweighted."""
  logp = jnp.log(jnp.array([[0.5, 0.5, 0.2]]))
  old = jnp.log(jnp.array([[0.25, 0.5, 0.4]]))
  ref = jnp.log(jnp.array([[0.5, 0.25, 0.2]]))
  behaviour = jnp.log(jnp.array([[0.5, 0.25, 0.1]]))
  iw = grpo.behaviour_weights(old, behaviour)
  np.testing.assert_allclose(iw, [[0.5, 2.0, 4.0]], rtol=1e-6)
  np.testing.assert_allclose(
    grpo.behaviour_weights(old, behaviour, 3.0), [[0.5, 2.0, 3.0]]
  )
  surr, kl, _, _ = grpo.token_terms(logp, old, ref, jnp.array([1.0]), 0.2, iw)
  np.testing.assert_allclose(surr, [[0.6, 2.0, 2.0]], rtol=1e-6)
  _, kl_plain, _, _ = grpo.token_terms(logp, old, ref, jnp.array([1.0]), 0.2)
  np.testing.assert_array_equal(kl, kl_plain)
  # d l_i / d logp_i at rho = 1 (pi_old = pi, stop-gradient):
  # -w_i A + beta (1 - e^r_i); the weights carry no gradient of their own.
  adv, beta = jnp.array([-0.7]), 0.04

  def loss(lp, old_lp):
    w = grpo.behaviour_weights(old_lp, behaviour, 3.0)
    return grpo.per_token_loss(
      lp, jax.lax.stop_gradient(old_lp), ref, adv, 0.2, beta, w
    ).sum()

  g = np.asarray(jax.grad(loss, argnums=(0, 1))(logp, logp)[0])
  w = np.minimum(np.exp(np.log([0.5, 0.5, 0.2]) - np.log([0.5, 0.25, 0.1])), 3.0)
  r = np.log([0.5, 0.25, 0.2]) - np.log([0.5, 0.5, 0.2])
  np.testing.assert_allclose(g[0], -w * -0.7 + beta * (1 - np.exp(r)), rtol=1e-5)
  assert np.asarray(jax.grad(loss, argnums=1)(logp, logp)).max() == 0.0


def test_decoupled_step_scales_the_gradient_by_the_behaviour_weight(toy):
  """With a behaviour policy c times less likely on every token than the
  params before the step (and no KL), the decoupled step's gradient is
  exactly c times the on-policy step's (c = 2), or the cap (1.5)."""
  config, model, params = toy
  optimizer = grpo.make_optimizer(config.rl)
  batch = _batch(model, params)
  # log pi_old of the step = its own teacher-forced log-probs = ref_logp here.
  prox = batch['ref_logp']
  norms, iws = {}, {}
  for name, hp, c in (
    ('sync', grpo.GrpoHParams(kl_beta=0.0), None),
    ('x2', grpo.GrpoHParams(kl_beta=0.0, decoupled=True), 2.0),
    ('cap', grpo.GrpoHParams(kl_beta=0.0, decoupled=True, iw_cap=1.5), 2.0),
  ):
    step = grpo.make_train_step(model, OPTS, hp, optimizer, 0.6)
    b = batch if c is None else dict(batch, behaviour_logp=prox - np.log(c))
    _, metrics, _ = step(_fresh_state(params, optimizer), b)
    norms[name] = float(metrics['grad_norm'])
    iws[name] = metrics.get('off_policy/iw')
  assert norms['sync'] > 1e-3
  assert iws['sync'] is None
  np.testing.assert_allclose(norms['x2'] / norms['sync'], 2.0, rtol=1e-3)
  np.testing.assert_allclose(float(iws['x2']), 2.0, rtol=1e-3)
  np.testing.assert_allclose(norms['cap'] / norms['sync'], 1.5, rtol=1e-3)
  np.testing.assert_allclose(float(iws['cap']), 1.5, rtol=1e-6)


def _batch(model, params, seed=0, mask=None, weights=None):
  prompts = ["a sign that reads 'OPEN'", "a red poster that reads 'SALE'"] * 2
  cond = model.encode_prompts(prompts)
  out = sampling.Sampler(model, OPTS).sample(params, cond, jax.random.key(seed))
  inputs = model.teacher_inputs(params, out.tokens)
  ref = grpo.make_logprob_fn(model, OPTS)(
    params['transformer'], cond, inputs, out.tokens
  )
  L = model.schedule.num_tokens
  return {
    'cond': jax.tree.map(jnp.asarray, cond),
    'inputs': inputs,
    'tokens': out.tokens,
    'old_logp': out.logprobs,
    'ref_logp': ref,
    'advantages': grpo.group_advantages(jnp.array([[1.0, 0.0], [0.3, 0.9]])).reshape(
      -1
    ),
    'mask': jnp.ones((4, L)) if mask is None else mask,
    'weights': jnp.asarray(
      panw.token_weights(model.schedule, 0.6) if weights is None else weights
    ),
    'on_policy': jnp.array(1.0),
  }


def _setup(config, model, params):
  optimizer = grpo.make_optimizer(config.rl)
  step = grpo.make_train_step(model, OPTS, grpo.GrpoHParams(), optimizer, 0.6)
  return optimizer, step


def _fresh_state(params, optimizer):
  copy = jax.tree.map(jnp.array, params['transformer'])
  return grpo.init_state(copy, optimizer)


def test_first_inner_update_has_ratio_exactly_one_and_kl_zero(toy):
  config, model, params = toy
  optimizer, step = _setup(config, model, params)
  batch = _batch(model, params)
  state, metrics, logp = step(_fresh_state(params, optimizer), batch)
  assert float(metrics['ratio']) == 1.0
  np.testing.assert_array_equal(np.asarray(metrics['scale/ratio']), 1.0)
  assert float(metrics['clip_frac']) == 0.0
  # Policy == reference before the update: k3 KL vanishes (up to float rounding
  # between the two compiled programs).
  assert abs(float(metrics['kl'])) < 1e-6
  # The teacher-forced log-probs equal the sampler's (<= 1e-4).
  assert float(jnp.abs(logp - batch['old_logp']).max()) <= 1e-4
  # A second inner update with the returned old log-probs moves the ratio.
  batch2 = dict(batch, old_logp=logp, on_policy=jnp.array(0.0))
  _, metrics2, _ = step(state, batch2)
  assert float(metrics2['ratio']) != 1.0


def test_masked_and_off_stage_tokens_get_zero_gradient(toy):
  config, model, params = toy
  sched = model.schedule
  prefix, _ = vmr.stage_tokens(sched, 1)
  weights = panw.token_weights(sched, 0.6, vmr.stage_scales(sched, 1)[0])
  mask = jnp.ones((4, sched.num_tokens)).at[:, :3].set(0.0)
  batch = _batch(model, params, mask=mask * prefix[None], weights=weights)
  # A reference apart from the policy, so that the KL term has a gradient.
  shift = 0.5 * jnp.sin(jnp.arange(batch['ref_logp'].size)).reshape(mask.shape)
  batch = dict(batch, ref_logp=batch['ref_logp'] + shift)
  hp = grpo.GrpoHParams()

  def reduce(logp):
    ell = grpo.per_token_loss(
      logp,
      jax.lax.stop_gradient(logp),
      batch['ref_logp'],
      batch['advantages'],
      hp.clip_eps,
      hp.kl_beta,
    )
    return panw.weighted_sum(ell, batch['weights'], batch['mask'])

  g = np.asarray(jax.grad(reduce)(batch['old_logp']))
  assert (g[:, :3] == 0).all()  # mask 0
  assert (g[:, prefix == 0] == 0).all()  # suffix tokens in a prefix update
  # At rho = 1: d l_i / d logp_i = -A + beta (1 - e^r), r = log pi_ref - log pi,
  # times w_i mask_i / B (the mean over rows of `panw.weighted_sum`).
  r = np.asarray(batch['ref_logp'], np.float64) - np.asarray(batch['old_logp'])
  adv = np.asarray(batch['advantages'], np.float64)[:, None]
  w = np.asarray(batch['mask']) * np.asarray(batch['weights'])[None]
  want = w * (-adv + hp.kl_beta * (1 - np.exp(r))) / g.shape[0]
  assert np.abs(want).max() > 1e-3
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-9)
  # With every token masked the parameters get exactly zero gradient.
  optimizer, step = _setup(config, model, params)
  zero = dict(batch, mask=jnp.zeros_like(batch['mask']))
  _, metrics, _ = step(_fresh_state(params, optimizer), zero)
  assert float(metrics['grad_norm']) == 0.0


def test_one_update_changes_params_and_is_deterministic(toy):
  config, model, params = toy
  optimizer, step = _setup(config, model, params)
  batch = _batch(model, params, seed=3)
  a, ma, _ = step(_fresh_state(params, optimizer), batch)
  b, mb, _ = step(_fresh_state(params, optimizer), batch)
  leaves_a, leaves_b = jax.tree.leaves(a.params), jax.tree.leaves(b.params)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  changed = [
    float(jnp.abs(x - y).max())
    for x, y in zip(leaves_a, jax.tree.leaves(params['transformer']))
  ]
  assert max(changed) > 0
  assert int(a.step) == 1
  shares = np.asarray(ma['scale/grad_share'])
  assert shares.shape == (model.schedule.num_scales,)
  np.testing.assert_allclose(shares.sum(), 1.0, rtol=1e-5)
  for k in ('loss', 'kl', 'entropy', 'grad_norm'):
    assert np.isfinite(float(ma[k])) and float(ma[k]) == float(mb[k])


def test_weight_decay_applies_to_kernels_only(toy):
  config, _, params = toy
  c = config.rl.copy_and_resolve_references()
  c.lr, c.weight_decay, c.grad_clip = 0.1, 0.5, 0.0
  optimizer = grpo.make_optimizer(c)
  p = params['transformer']
  zero_grads = jax.tree.map(jnp.zeros_like, p)
  updates, _ = optimizer.update(zero_grads, optimizer.init(p), p)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  # Zero gradients leave Adam's step at 0: only the decoupled decay -lr wd p.
  for (path, u), x in zip(flat, jax.tree.leaves(p), strict=True):
    name = getattr(path[-1], 'key', '')
    want = -c.lr * c.weight_decay * np.asarray(x) if name == 'kernel' else 0 * x
    np.testing.assert_allclose(u, want, rtol=1e-6, atol=0, err_msg=str(path))


@pytest.mark.parametrize('policy', ['cfg', 'cond'])
def test_policy_choice_changes_logprobs(toy, policy):
  _, model, params = toy
  batch = _batch(model, params)
  opts = SamplingOptions(cfg_scale=3.0, policy=policy)
  lp = grpo.make_logprob_fn(model, opts)(
    params['transformer'],
    batch['cond'],
    batch['inputs'],
    batch['tokens'],
  )
  same = float(jnp.abs(lp - batch['ref_logp']).max()) < 1e-6
  assert same == (policy == 'cfg')


def test_micro_batches_give_the_same_update(toy):
  """Micro-batches of 2 rows (train_microbatches = 2 of 4 rows) add the
  gradients of two strided row blocks: the same loss, gradient, update and
  per-row log-probs as one pass."""
  config, model, params = toy
  optimizer = grpo.make_optimizer(config.rl)
  batch = _batch(model, params, seed=5)
  # Rows with different advantages and masks, so a wrong split would show.
  batch['mask'] = batch['mask'].at[1, :5].set(0.0)
  outs = []
  for micro_rows in (0, 2):
    hp = grpo.GrpoHParams(micro_rows=micro_rows)
    step = grpo.make_train_step(model, OPTS, hp, optimizer, 0.6)
    outs.append(step(_fresh_state(params, optimizer), batch))
  (s1, m1, l1), (s2, m2, l2) = outs
  np.testing.assert_allclose(m2['loss'], m1['loss'], rtol=1e-5)
  np.testing.assert_allclose(m2['grad_norm'], m1['grad_norm'], rtol=1e-4)
  np.testing.assert_allclose(l2, l1, atol=1e-5)
  for x, y in zip(jax.tree.leaves(s2.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  with pytest.raises(ValueError, match='micro-batches of 3 rows'):
    step3 = grpo.make_train_step(
      model, OPTS, grpo.GrpoHParams(micro_rows=3), optimizer, 0.6
    )
    step3(_fresh_state(params, optimizer), batch)
