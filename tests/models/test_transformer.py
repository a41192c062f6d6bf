import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import toy_config
from varrl_jax.models import text
from varrl_jax.models.attention import block_causal_mask
from varrl_jax.models.family import build_model

PROMPTS = ["a sign that reads 'OPEN'", "a poster that reads 'HOT' and 'CAFE'"]


def _logits(model, params, tokens, prompts=PROMPTS):
  ids, mask = text.encode(prompts, model.cfg.text_len)
  return _forward(model, params, ids, mask, tokens)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, ids, mask, tokens):
  inputs = model.teacher_inputs(params, tokens)
  return model.transformer.apply(params['transformer'], ids, mask, inputs)


def _random_tokens(model, seed, batch=2):
  return jax.random.randint(
    jax.random.key(seed), (batch, model.schedule.num_tokens), 0, model.cfg.vocab_size
  )


@pytest.mark.parametrize('s', [0, 1])
def test_block_causal_changing_scale_s_only_changes_later_scales(toy, s):
  _, model, params = toy
  sched = model.schedule
  tokens = _random_tokens(model, 0)
  start, end = sched.span(s)
  changed = tokens.at[:, start:end].set(
    (tokens[:, start:end] + 7) % model.cfg.vocab_size
  )
  a, b = _logits(model, params, tokens), _logits(model, params, changed)
  upto = sched.offsets[s + 1]
  np.testing.assert_array_equal(a[:, :upto], b[:, :upto])
  diff = np.abs(np.asarray(a[:, upto:] - b[:, upto:])).max(axis=-1)
  # Every token of every later scale sees the change.
  assert (diff > 0).all()


def test_last_scale_tokens_change_no_logits(toy):
  _, model, params = toy
  tokens = _random_tokens(model, 1)
  start, _ = model.schedule.span(model.schedule.num_scales - 1)
  changed = tokens.at[:, start:].set(0)
  np.testing.assert_array_equal(
    _logits(model, params, tokens), _logits(model, params, changed)
  )


def test_prompt_conditions_every_scale_and_padding_is_ignored(toy):
  _, model, params = toy
  tokens = _random_tokens(model, 2)
  a = _logits(model, params, tokens)
  b = _logits(model, params, tokens, ["a sign that reads 'SHUT'", PROMPTS[1]])
  assert (np.abs(np.asarray(a[0] - b[0])).max(-1) > 0).all()
  np.testing.assert_array_equal(a[1], b[1])
  # Garbage in padded text positions changes nothing.
  ids, mask = text.encode(PROMPTS, model.cfg.text_len)
  noisy = np.where(mask, ids, 77)
  c = _forward(model, params, noisy, mask, tokens)
  np.testing.assert_allclose(a, c, atol=1e-6)


def test_quote_slots_embed_the_quoted_bytes_only():
  config = toy_config()
  config.model.quote_slots = 4
  model = build_model(config)
  params = model.init(jax.random.key(0))
  tp = params['transformer']['params']
  assert tp['quote_start'].shape == tp['quote_end'].shape == (4, 32)
  assert tp['quote_centre'].shape == (7, 32)
  tokens = _random_tokens(model, 3, batch=3)
  prompts = [PROMPTS[0], "a poster that reads 'HOT' and 'BAR'", 'no quotes here']
  base = _logits(model, params, tokens, prompts)
  # Changing the slot embeddings moves exactly the prompts that quote a word.
  for name in ('quote_start', 'quote_end', 'quote_centre'):
    moved = jax.tree.map(lambda x: x, params)
    moved['transformer']['params'][name] = tp[name] + 0.5
    out = _logits(model, params | moved, tokens, prompts)
    assert np.abs(np.asarray(out[:2] - base[:2])).max() > 1e-3
    np.testing.assert_array_equal(out[2], base[2])
  # Slot 3 of quote_start is the 4th letter: 'OPEN' has one, 3-letter words not.
  only_last = jax.tree.map(lambda x: x, params)
  only_last['transformer']['params']['quote_start'] = tp['quote_start'].at[3].add(1.0)
  out = _logits(model, only_last, tokens, prompts)
  assert np.abs(np.asarray(out[0] - base[0])).max() > 1e-3
  np.testing.assert_array_equal(out[1], base[1])
  np.testing.assert_array_equal(out[2], base[2])
  # quote_centre row r is from_start - from_end = r - 3 half letters from the
  # centre: even rows are letters of even-length words ('OPEN' at -3, -1, 1,
  # 3), odd rows of odd-length ones ('HOT', 'BAR' at -2, 0, 2).
  for row, moves in ((0, (True, False)), (6, (True, False)), (3, (False, True))):
    bumped = jax.tree.map(lambda x: x, params)
    bumped['transformer']['params']['quote_centre'] = (
      tp['quote_centre'].at[row].add(1.0)
    )
    out = _logits(model, bumped, tokens, prompts)
    for i, move in enumerate(moves):
      changed = np.abs(np.asarray(out[i] - base[i])).max() > 1e-3
      assert changed == move, (row, i)
    np.testing.assert_array_equal(out[2], base[2])


def test_mask_definition():
  q_seg = jnp.array([0, 0, 1, 2, 2])
  valid = jnp.array([[True, False, True, True, True]])
  m = np.asarray(block_causal_mask(q_seg, q_seg, valid))[0]
  expected = np.array(
    [
      [1, 0, 0, 0, 0],
      [1, 0, 0, 0, 0],
      [1, 0, 1, 0, 0],
      [1, 0, 1, 1, 1],
      [1, 0, 1, 1, 1],
    ],
    bool,
  )
  np.testing.assert_array_equal(m, expected)


def test_every_parameter_has_logical_axis_names(toy):
  _, model, _ = toy
  boxed = jax.eval_shape(model.init_boxed, jax.random.key(0))['transformer']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), type(leaf)
    assert len(leaf.names) == len(leaf.value.shape)
  specs = nn.get_partition_spec(boxed)
  layer_q = specs['params']['layers']['q']['kernel']
  assert tuple(layer_q) == ('layers', 'embed', 'heads', 'kv')
  assert tuple(specs['params']['head']['kernel']) == ('embed', 'vocab')


def test_gqa_shapes_and_validation(toy):
  _, model, params = toy
  layers = params['transformer']['params']['layers']
  cfg = model.cfg
  assert layers['q']['kernel'].shape == (2, cfg.d_model, 4, cfg.head_dim)
  assert layers['k']['kernel'].shape == (2, cfg.d_model, 2, cfg.head_dim)
  c = toy_config()
  c.model.num_kv_heads = 3
  with pytest.raises(
    ValueError, match='num_heads=4 must be a multiple of config.model.num_kv_heads=3'
  ):
    build_model(c)


def test_remat_gives_the_same_gradients(toy):
  config, model, params = toy
  c = toy_config()
  c.model.remat = 'full'
  remat_model = build_model(c)
  tokens = _random_tokens(model, 3)
  ids, mask = text.encode(PROMPTS, model.cfg.text_len)
  inputs = model.teacher_inputs(params, tokens)

  def loss(p, m):
    return jnp.mean(m.transformer.apply(p, ids, mask, inputs) ** 2)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g1 = grad(params['transformer'], model)
  g2 = grad(params['transformer'], remat_model)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2
  )


def test_dense_rows_layout_equals_batched(toy):
  """config.model.dense_layout: 'rows' ([B T, d] dense layers, the CPU
  default) and 'batched' ([B, T, d]) are the same model: logits and
  gradients ('auto' is 'rows' on the CPU; the cached sampler's path is
  checked against the teacher-forced one in tests/test_sampling.py)."""
  from varrl_jax.models import rows as rows_lib

  config, _, params = toy
  models = {}
  for layout in ('rows', 'batched'):
    c = toy_config()
    c.model.dense_layout = layout
    models[layout] = build_model(c)
  assert models['rows'].cfg.flat_rows and not models['batched'].cfg.flat_rows
  assert rows_lib.resolve_dense_layout('auto') == (jax.default_backend() == 'cpu')
  with pytest.raises(ValueError, match='dense_layout'):
    rows_lib.resolve_dense_layout('flat')
  tokens = _random_tokens(models['rows'], 3)
  out = {k: _logits(m, params, tokens) for k, m in models.items()}
  assert float(jnp.abs(out['rows']).max()) > 0.1
  np.testing.assert_allclose(out['rows'], out['batched'], atol=2e-5, rtol=1e-5)
  ids, mask = text.encode(PROMPTS, config.model.text_len)

  def grads(model):
    def loss(p):
      inputs = model.teacher_inputs(params, tokens)
      logits = model.transformer.apply(p, ids, mask, inputs)
      return jnp.sum(jax.nn.log_softmax(logits)[..., 0])

    return jax.grad(loss)(params['transformer'])

  g_rows, g_batched = grads(models['rows']), grads(models['batched'])
  for a, b in zip(jax.tree.leaves(g_rows), jax.tree.leaves(g_batched)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
