"""configs/small.py, the many-scale testbed: its schedule, and tiny's
tokenizer read at eight scales."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varrl_jax import checkpoint, cli
from varrl_jax.data import synthetic
from varrl_jax.models import tokenizer as tok_lib
from varrl_jax.models.family import build_model
from varrl_jax.weights import SHIPPED_SMALL, SHIPPED_TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name):
  return cli.load_config_file(os.path.join(ROOT, 'configs', f'{name}.py'))


def test_schedule_has_eight_scales_spanning_100x():
  config = _config('small')
  model = build_model(config)
  sched = model.schedule
  counts = [h * w for h, w in sched.grids]
  assert sched.num_scales >= 8 and counts[-1] / counts[0] >= 100
  assert counts == [1, 2, 4, 12, 16, 36, 64, 100] and sched.num_tokens == 235
  tiny = _config('tiny')
  # Everything else is the tiny config's: images, tokenizer sizes, RL.
  assert tuple(config.image_size) == tuple(tiny.image_size)
  assert sched.grids[-1] == build_model(tiny).schedule.grids[-1]
  assert config.sampling.top_k == tiny.sampling.top_k
  assert config.rl.inner_updates == tiny.rl.inner_updates
  # RL from this stronger model moves it at 2e-5 (tiny's 5e-5 lost accuracy).
  assert (config.rl.lr, tiny.rl.lr) == (2e-5, 5e-5)
  expected = SHIPPED_SMALL if os.path.isdir(SHIPPED_SMALL) else ''
  assert config.init_checkpoint == expected
  # The split nearest the paper's m256 of 1024² (1/4 of the side).
  assert config.rl.vmr.m == '3' and sched.grids[3] == (2, 6)


@pytest.mark.skipif(not os.path.isdir(SHIPPED_TINY), reason='no shipped tiny model')
def test_tiny_tokenizer_reads_finer_at_eight_scales():
  """The small config's tokenizer has tiny's parameter tree (four shared phi
  refiners); quantized at eight scales its residual is smaller than at four."""
  small, tiny = build_model(_config('small')), build_model(_config('tiny'))
  params = checkpoint.load_params(SHIPPED_TINY, small, ('tokenizer',))['tokenizer']
  variety = synthetic.Variety.from_config(_config('small').data)
  data = synthetic.SyntheticTextDataset(
    'heldout', small.schedule.image_size, 0, variety=variety
  )
  x = jnp.asarray(np.stack([data[i].image for i in range(2)]), jnp.float32) / 255.0
  vq = tok_lib.MultiScaleVQVAE

  def residual(model):
    @jax.jit
    def run(p, x):
      f = model.tokenizer.apply(p, x, method=vq.encode)
      ids = model.tokenizer.apply(p, x, method=vq.encode_to_scales)
      f_hat = model.tokenizer.apply(p, ids, method=vq.fhat_from_scales)
      return ids, jnp.mean((f - f_hat) ** 2) / jnp.mean(f**2)

    ids, rel = run(params, x)
    assert [i.shape[1:] for i in ids] == list(model.schedule.grids)
    return float(rel)

  fine, coarse = residual(small), residual(tiny)
  assert fine < coarse < 1.0


@pytest.mark.skipif(not os.path.isdir(SHIPPED_SMALL), reason='no shipped small model')
def test_shipped_small_checkpoint_loads_and_records_its_quality():
  config = _config('small')
  manifest = checkpoint.read_manifest(SHIPPED_SMALL)
  assert manifest['parts'] == ['tokenizer', 'transformer']
  size = sum(
    os.path.getsize(os.path.join(d, f))
    for d, _, fs in os.walk(SHIPPED_SMALL)
    for f in fs
  )
  assert size < 12 * 2**20, f'shipped checkpoint is {size / 2**20:.1f} MiB'
  quality = manifest['quality']
  # The bar: greedy held-out Word Accuracy >= 0.25, and room above
  # the rollout sampling's figure.
  greedy = quality['heldout_greedy']['metrics']['word_accuracy']
  rollout = quality['heldout_topk2_topp09']['metrics']['word_accuracy']
  assert greedy >= 0.25 and rollout < 0.9
  model = build_model(config)
  params = checkpoint.load_params(SHIPPED_SMALL, model)
  # Its tokenizer is the tiny one's (the token ids the transformer learned).
  tiny = checkpoint.load_params(SHIPPED_TINY, model, ('tokenizer',))
  for a, b in zip(
    jax.tree.leaves(params['tokenizer']),
    jax.tree.leaves(tiny['tokenizer']),
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
