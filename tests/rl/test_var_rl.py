"""RL on a converted official VAR checkpoint (the reduced model of
tests/models/data/var_reference.npz: depth 2, 7 scales at 128^2): class-id
prompts, a reward without text (JPEG compressibility), the full method
(VMR prefix/suffix with K = 2, PANW, MP falling back to all-ones), through
`varrl_jax.train` as a user runs it, then resumed."""

import numpy as np
import pytest

from tests.models import var_fixture
from varrl_jax import checkpoint
from varrl_jax.convert import official as convert_main
from varrl_jax.models.var_official import weights
from varrl_jax.writers import read_jsonl


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The reduced official checkpoint, saved by torch and converted."""
  import torch

  d = tmp_path_factory.mktemp('var')
  model, params = var_fixture.model_and_params()
  vae, var = weights.state_dicts_from_params(model, params)
  paths = {}
  for name, sd in (('vae', vae), ('transformer', var)):
    paths[name] = str(d / f'{name}.pth')
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, paths[name])
  out = d / 'ckpt'
  convert_main.convert('var', str(out), 'test', var_fixture.config(), **paths)
  return str(out)


def _config(converted, updates: int):
  c = var_fixture.config()
  c.init_checkpoint = converted
  c.rl.prompts = 'classes:207,3,88,974'
  c.rl.rewards = 'jpeg_compressibility'
  c.rl.mode = 'full'
  c.rl.prompts_per_update = 2
  c.rl.group_size = 2
  c.rl.rollout_chunks = 1
  c.rl.vmr.m = '3'
  c.rl.vmr.num_branches = 2
  c.rl.vmr.prefix_updates, c.rl.vmr.suffix_updates = 1, 1
  c.rl.num_updates = updates
  c.rl.lr = 1e-3
  c.sampling.cfg_schedule = 'var'
  c.sampling.cfg_scale = 1.5
  c.sampling.top_k = 50
  c.sampling.top_p = 0.95
  c.eval.num_prompts = 2
  c.eval.batch_size = 2
  c.eval.grid_images = 2
  c.checkpoint.every = 1
  return c


def test_var_checkpoint_trains_with_the_full_method_and_resumes(
  converted, tmp_path, caplog
):
  from varrl_jax import train

  straight = tmp_path / 'straight'
  result = train.train(_config(converted, 2), str(straight))
  records = read_jsonl(str(straight / 'metrics.jsonl'))
  assert [r['phase/prefix'] for r in records] == [1.0, 0.0]  # prefix, then suffix
  for r in records:
    assert r['mask/coverage'] == 1.0  # no regions: all-ones MP masks
    assert r['reward/jpeg_compressibility/mean'] == pytest.approx(r['reward/mean'])
    assert r['reward/std'] > 0 and np.isfinite(r['train/loss'])
    # The per-scale metrics cover the 7 scales of the family's schedule.
    assert {f'scale{s}/kl' for s in range(7)} <= set(r)
  # PANW: k_s = (h_s w_s)^-alpha on the 1, 2, 3, 4, 5, 6, 8 grids; VMR: the
  # prefix update trains scales <= m = 3 only, the suffix update the rest.
  alpha = var_fixture.config().rl.panw.alpha
  for r in records:
    for s, side in enumerate((1, 2, 3, 4, 5, 6, 8)):
      assert r[f'scale{s}/panw_weight'] == pytest.approx(side ** (-2 * alpha))
  assert all(records[0][f'scale{s}/grad_share'] == 0.0 for s in (4, 5, 6))
  assert all(records[1][f'scale{s}/grad_share'] == 0.0 for s in (0, 1, 2, 3))
  warnings = [r for r in caplog.records if 'gives no regions' in r.getMessage()]
  assert len(warnings) == 1
  assert result['after'].n_images == 2

  # The transformer moved; the tokenizer is frozen.
  model, start = var_fixture.model_and_params()
  final = checkpoint.load_params(str(straight / 'checkpoints' / 'final'), model)
  moved = [
    float(np.abs(np.asarray(a) - np.asarray(b)).max())
    for a, b in zip(jax_leaves(final['transformer']), jax_leaves(start['transformer']))
  ]
  assert max(moved) > 0
  for a, b in zip(jax_leaves(final['tokenizer']), jax_leaves(start['tokenizer'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # One update, then a resumed second: the same weights bit for bit.
  split = tmp_path / 'split'
  train.train(_config(converted, 1), str(split))
  train.train(_config(converted, 2), str(split))
  resumed = checkpoint.load_params(str(split / 'checkpoints' / 'final'), model)
  for a, b in zip(jax_leaves(resumed), jax_leaves(final)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
  import jax

  return jax.tree.leaves(tree)
