"""Group sanity: batch shapes checked before any compile (rl/batch_check.py)."""

import pytest

from varrl_jax.config import base_config
from varrl_jax.rl import batch_check


def _config(p=16, g=16, chunks=4, k=2, mode='full', data=1, fsdp=-1, eval_bs=64):
  c = base_config()
  c.rl.prompts_per_update, c.rl.group_size, c.rl.rollout_chunks = p, g, chunks
  c.rl.vmr.num_branches, c.rl.mode = k, mode
  c.mesh.data, c.mesh.fsdp = data, fsdp
  c.eval.batch_size = eval_bs
  return c


def test_paper_shapes_on_a_v5p_128():
  shape = batch_check.check_batches(_config(), num_devices=64, num_processes=8)
  assert shape == batch_check.BatchShape(
    prompts_per_chunk=4, rows_per_chunk=64, rows_per_update=512, data_devices=64
  )
  vanilla = batch_check.check_batches(_config(mode='vanilla'), 64, 8)
  assert vanilla.rows_per_update == 256


def test_defaults_on_this_host():
  shape = batch_check.check_batches(base_config())  # jax's own device count
  assert shape.rows_per_chunk == 8 and shape.rows_per_update == 32


@pytest.mark.parametrize(
  'config, devices, processes, message',
  [
    (
      _config(p=6, chunks=4),
      8,
      1,
      'config.rl.prompts_per_update=6 is not divisible by config.rl.rollout_chunks=4',
    ),
    (
      _config(p=16, g=3, chunks=4),
      8,
      1,
      'rollout chunk of config.rl.prompts_per_update=16 / config.rl.rollout_chunks=4 '
      'x config.rl.group_size=3 = 12 rows does not divide over config.mesh data x '
      'fsdp = 1 x 8 = 8 devices (of 8 in 1 processes)',
    ),
    (
      _config(data=2, fsdp=4, p=4, g=4, chunks=4, eval_bs=8),
      8,
      2,
      'config.rl.group_size=4 = 4 rows does not divide over config.mesh data x fsdp '
      '= 2 x 4 = 8 devices (of 8 in 2 processes)',
    ),
    (
      _config(eval_bs=16),
      64,
      8,
      'config.eval.batch_size=16 does not divide over config.mesh data x fsdp = 1 x '
      '64 = 64 devices (of 64 in 8 processes)',
    ),
    (_config(g=0), 8, 1, 'config.rl.group_size=0: expected a positive integer'),
    (_config(k=0), 8, 1, 'config.rl.vmr.num_branches=0: expected a positive integer'),
    (_config(chunks=0), 8, 1, 'config.rl.rollout_chunks=0: expected a positive'),
    (_config(data=3, fsdp=-1), 8, 1, 'config.mesh'),
  ],
)
def test_bad_shapes_are_one_error_naming_keys_and_numbers(
  config, devices, processes, message
):
  with pytest.raises(ValueError) as e:
    batch_check.check_batches(config, devices, processes)
  assert message in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_tensor_axis_rows_need_only_the_data_axes():
  # 8 devices as data 2 x tensor 4: rows split two ways, whatever the processes.
  c = _config(p=2, g=1, chunks=1, data=2, fsdp=1, eval_bs=2)
  c.mesh.tensor = 4
  assert batch_check.check_batches(c, 8, 4).data_devices == 2


def test_micro_batches_must_divide_over_devices():
  c = base_config()
  c.rl.prompts_per_update, c.rl.group_size, c.rl.rollout_chunks = 4, 4, 2
  c.rl.train_microbatches = 2
  batch_check.check_batches(c, 8, 1)  # 16 rows / 2 = 8 per micro-batch
  c.rl.train_microbatches = 4
  with pytest.raises(
    ValueError, match=r'= 16 rows does not split into config\.rl\.train_microbatches=4'
  ):
    batch_check.check_batches(c, 8, 1)
