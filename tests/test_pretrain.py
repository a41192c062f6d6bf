"""Pretraining: the tokenizer learns, dead codes restart, both stages run and save."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import toy_config
from varrl_jax import checkpoint
from varrl_jax.data import batches as batches_lib
from varrl_jax.models.family import build_model
from varrl_jax.pretrain import loop, tokenizer_stage, transformer_stage
from varrl_jax.writers import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  c = toy_config()
  c.model.text_len = 96  # synthetic prompts need up to 82 byte tokens
  for sc in (c.pretrain.tokenizer, c.pretrain.transformer):
    sc.batch_size, sc.warmup_steps, sc.lr = 4, 1, 3e-3
  c.pretrain.num_samples = 4
  c.pretrain.prefetch = 1
  return c


def test_usage_metrics_and_ink_weights():
  m = tokenizer_stage.usage_metrics(jnp.array([2, 2, 0, 0]))
  assert float(m['usage']) == 0.5
  np.testing.assert_allclose(float(m['perplexity']), 2.0, rtol=1e-6)
  x = jnp.ones((1, 4, 4, 3)).at[0, 1, 1].set(0.0)  # one black pixel on white
  w = tokenizer_stage.ink_weights(x, 4.0)
  assert float(w[0, 0, 0]) == 1.0 and float(w[0, 1, 1]) == 5.0


def test_restart_dead_codes_replaces_exactly_the_unused_codes():
  v, c, step, threshold = 8, 3, 50, 10
  codebook = jnp.zeros((v, c))
  last_used = jnp.array([50, 45, 40, 39, 0, 49, 41, 20], jnp.int32)
  pool = 100.0 + jnp.arange(30.0 * c).reshape(30, c)  # far from every code
  new, new_last, n = tokenizer_stage.restart_dead_codes(
    codebook, last_used, jnp.int32(step), pool, jax.random.key(0), threshold, 0.0
  )
  dead = np.asarray(step - last_used >= threshold)
  assert int(n) == dead.sum() == 4
  np.testing.assert_array_equal(np.asarray(new)[~dead], 0.0)
  pool_rows = {tuple(r) for r in np.asarray(pool).tolist()}
  assert all(tuple(r) in pool_rows for r in np.asarray(new)[dead].tolist())
  np.testing.assert_array_equal(
    np.asarray(new_last), np.where(dead, step, np.asarray(last_used))
  )


def test_tokenizer_loss_decreases_on_a_fixed_batch(toy):
  _, model, params = toy  # the tokenizer does not depend on text_len
  config = _config()
  sc = config.pretrain.tokenizer
  sc.steps, sc.dead_code_steps = 20, 5
  optimizer, _ = loop.make_optimizer(sc)
  # A copy: the step donates its state, and the fixture's params are shared.
  own = jax.tree.map(jnp.copy, params['tokenizer'])
  state = tokenizer_stage.init_state(model, optimizer, own)
  codebook0 = np.asarray(state.params['params']['codebook'])
  step = tokenizer_stage.make_train_step(model, optimizer, sc)
  batch = next(batches_lib.synthetic_batches('train', config.image_size, 0, 8))
  history = []
  for _ in range(sc.steps):
    state, metrics = step(state, batch, jax.random.key(0))
    history.append(jax.device_get(metrics))
  losses = [float(m['loss']) for m in history]
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
  # Codes unchosen for 5 steps were restarted, changing their rows.
  restarted = sum(int(m['restarted']) for m in history)
  changed = np.any(np.asarray(state.params['params']['codebook']) != codebook0, axis=1)
  assert restarted > 0 and changed.sum() > 0
  assert 0 < float(history[-1]['usage']) <= 1 and float(history[-1]['perplexity']) >= 1


def test_decoder_finetune_changes_the_decoder_only_and_keeps_the_ids(toy):
  _, model, params = toy
  config = _config()
  sc = config.pretrain.tokenizer
  sc.steps, sc.dead_code_steps, sc.trainable = 8, 1, 'decoder'
  optimizer, _ = loop.make_optimizer(sc)
  own = jax.tree.map(jnp.copy, params['tokenizer'])
  before = jax.tree.map(np.asarray, own)
  state = tokenizer_stage.init_state(model, optimizer, own, 'decoder')
  # The optimizer state covers the decoder alone (no encoder moments).
  n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
  n_dec = sum(x.size for x in jax.tree.leaves(before['params']['decoder']))
  assert 2 * n_dec <= n_opt < 2 * n_dec + 16
  step = tokenizer_stage.make_train_step(model, optimizer, sc)
  batch = next(batches_lib.synthetic_batches('train', config.image_size, 0, 8))
  x = jnp.asarray(batch['images'], jnp.float32) / 255.0
  encode = jax.jit(
    lambda p, x: model.tokenizer.apply(
      p, x, method=tokenizer_stage.tok_lib.MultiScaleVQVAE.encode_to_scales
    )
  )
  ids0 = [np.asarray(r) for r in encode(before, x)]
  history = []
  for _ in range(sc.steps):
    state, metrics = step(state, batch, jax.random.key(0))
    history.append(jax.device_get(metrics))
  after = jax.tree.map(np.asarray, state.params)
  for name in before['params']:
    same = all(
      np.array_equal(a, b)
      for a, b in zip(
        jax.tree.leaves(before['params'][name]), jax.tree.leaves(after['params'][name])
      )
    )
    assert same == (name != 'decoder'), name
  # dead_code_steps=1 would restart codes in a full run; not here.
  assert sum(int(m['restarted']) for m in history) == 0
  losses = [float(m['loss']) for m in history]
  assert losses[-1] < losses[0], losses
  for r0, r1 in zip(ids0, encode(state.params, x)):
    np.testing.assert_array_equal(r0, np.asarray(r1))


def test_tokenizer_stage_config_errors_name_the_key():
  config = _config()
  config.pretrain.tokenizer.trainable = 'encoder'
  with pytest.raises(ValueError, match=r'pretrain\.tokenizer\.trainable'):
    tokenizer_stage.check_config(config)
  config.pretrain.tokenizer.trainable = 'decoder'
  with pytest.raises(ValueError, match=r'pretrain\.tokenizer\.init_from'):
    tokenizer_stage.check_config(config)
  config.pretrain.tokenizer.init_from = '/some/ckpt'
  tokenizer_stage.check_config(config)


def test_both_stages_run_and_save(tmp_path):
  config = _config()
  for sc in (config.pretrain.tokenizer, config.pretrain.transformer):
    sc.steps, sc.log_every, sc.sample_every, sc.ckpt_every = 3, 1, 3, 2
  workdir = str(tmp_path)
  tok_path = tokenizer_stage.train(config, workdir, 'TOK-CMD')
  tr_path = transformer_stage.train(config, workdir, 'TR-CMD')

  assert tok_path == os.path.join(workdir, 'tokenizer', 'checkpoints', 'final')
  assert checkpoint.read_manifest(tok_path)['parts'] == ['tokenizer']
  manifest = checkpoint.read_manifest(tr_path)
  assert manifest['parts'] == ['tokenizer', 'transformer']
  assert manifest['step'] == 3 and manifest['command'] == 'TR-CMD'
  # The manifest keeps the metrics logged at the last step.
  logged = read_jsonl(os.path.join(workdir, 'transformer', 'metrics.jsonl'))
  last = [r for r in logged if r['step'] == 3 and 'loss' in r][-1]
  assert np.isfinite(last['loss']) and manifest['metrics']['loss'] == last['loss']
  for stage, grid in (('tokenizer', 'recon'), ('transformer', 'samples')):
    stage_dir = os.path.join(workdir, stage)
    records = read_jsonl(os.path.join(stage_dir, 'metrics.jsonl'))
    assert [r['step'] for r in records if 'loss' in r] == [1, 2, 3]
    assert any('eval/mae' in r or 'eval/loss' in r for r in records)
    assert os.path.isfile(os.path.join(stage_dir, 'grids', f'{grid}_0000003.png'))
    if stage == 'transformer':
      gains = [r['eval/prompt_gain'] for r in records if 'eval/prompt_gain' in r]
      # Shuffled prompts change the loss of an untrained model only a little,
      # but they change it: the prompt reaches the logits.
      assert gains and all(np.isfinite(g) and g != 0.0 for g in gains)
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(stage_dir))
    assert sorted(os.listdir(os.path.join(stage_dir, 'checkpoints'))) == [
      'final',
      'step_0000002',
    ]

  # The shipped layout: one directory gives the whole model, tokenizer included.
  model = build_model(config)
  params = checkpoint.load_params(tr_path, model)
  tok_alone = checkpoint.load_params(tok_path, model, ('tokenizer',))
  for a, b in zip(
    jax.tree.leaves(params['tokenizer']), jax.tree.leaves(tok_alone['tokenizer'])
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Continued training starts from the saved transformer, and its manifest
  # chains the recipe: tokenizer, first transformer run, this run.
  assert manifest['recipe'] == ['TOK-CMD', 'TR-CMD']
  config.pretrain.transformer.init_from = tr_path
  config.pretrain.transformer.tokenizer_checkpoint = tok_path
  config.pretrain.transformer.lr = 0.0  # no update: the params stay as loaded
  config.pretrain.transformer.steps = 1
  more = transformer_stage.train(config, str(tmp_path / 'more'), 'MORE-CMD')
  more = str(more)
  assert checkpoint.read_manifest(more)['recipe'] == ['TOK-CMD', 'TR-CMD', 'MORE-CMD']
  continued = checkpoint.load_params(more, model)
  for a, b in zip(
    jax.tree.leaves(continued['transformer']), jax.tree.leaves(params['transformer'])
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_both_stages_are_deterministic_on_one_host(tmp_path):
  # The same config and seeds give bit-identical checkpoints: the data,
  # dead-code restarts and prompt dropout are all seeded (a rerun on another
  # host is another matter: docs/pretraining.md, "Pretraining in 60 minutes").
  config = _config()
  config.pretrain.tokenizer.dead_code_steps = 1  # restarts happen at once
  for sc in (config.pretrain.tokenizer, config.pretrain.transformer):
    sc.steps, sc.log_every, sc.sample_every, sc.ckpt_every = 3, 3, 100, 100
  model = build_model(config)
  runs = []
  for name in ('a', 'b'):
    workdir = str(tmp_path / name)
    tokenizer_stage.train(config, workdir, 'TOK')
    runs.append(
      checkpoint.load_params(transformer_stage.train(config, workdir, 'TR'), model)
    )
  restarted = [
    r['restarted']
    for r in read_jsonl(str(tmp_path / 'a' / 'tokenizer' / 'metrics.jsonl'))
    if 'restarted' in r
  ]
  assert restarted and max(restarted) > 0
  a, b = (jax.tree_util.tree_leaves_with_path(r) for r in runs)
  assert len(a) == len(b) > 0
  for (path, x), (_, y) in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
  assert checkpoint.fingerprint(runs[0]) == checkpoint.fingerprint(runs[1])


def test_nan_loss_stops_after_saving(tmp_path):
  state = {'w': jnp.zeros(3)}

  def step_fn(state, batch):
    return state, {'loss': jnp.float32(np.nan if batch == 4 else 1.0)}

  spec = loop.LoopSpec(
    stage='tokenizer',
    workdir=str(tmp_path),
    steps=10,
    log_every=2,
    sample_every=100,
    ckpt_every=2,
    keep_checkpoints=1,
    lr=0.1,
    lr_schedule=lambda step: 0.1,
    manifest={},
  )
  with pytest.raises(loop.Diverged) as e:
    loop.train_loop(
      spec,
      state,
      step_fn,
      iter(range(100)),
      params_of=lambda s: {'tokenizer': {'params': s}},
      evaluate=lambda s, step: {},
    )
  msg = str(e.value)
  assert 'loss is nan at step 6' in msg and '--config.pretrain.tokenizer.lr' in msg
  assert os.path.join(str(tmp_path), 'checkpoints', 'step_0000004') in msg
  saved = sorted(os.listdir(tmp_path / 'checkpoints'))
  assert saved == ['diverged_step_0000006', 'step_0000004']


def test_cli_missing_tokenizer_is_one_error_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'varrl_jax.pretrain',
      '--config=configs/tiny.py',
      '--stage=transformer',
      f'--workdir={tmp_path}',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert os.path.join(str(tmp_path), 'tokenizer', 'checkpoints', 'final') in errors[0]
  assert (
    f'python -m varrl_jax.pretrain --config=configs/tiny.py --stage=tokenizer '
    f'--workdir={tmp_path}' in errors[0]
  )
