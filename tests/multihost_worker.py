"""One process of the multi-process RL test (`tests/test_multihost.py`).

  python -m tests.multihost_worker WORKDIR NUM_PROCESSES PROCESS_ID PORT

With NUM_PROCESSES > 1 it joins a job of local CPU processes through
``config.distributed`` (coordinator 127.0.0.1:PORT, gloo collectives), then
runs `varrl_jax.train.train` (held-out eval, two RL updates, train-state and
final checkpoints) on the toy model with the deterministic fake OCR engine
of the RL tests.
"""

import sys

import tests.conftest  # noqa: F401  (the test suite's XLA flags, before JAX starts)
from tests.rl.test_loop import ReadsWhenBright, _train_config


def config():
  """The run of the test: 'full' mode (prefix updates, K = 2 branches, MP
  masks from the all-gathered boxes of every OCR word), 2 prompts x G = 2,
  two updates."""
  c = _train_config()
  c.rl.mp.boxes = 'all'
  c.rl.num_updates = 2
  c.checkpoint.every = 1
  return c


def main(argv):
  workdir, num_processes, process_id, port = argv[1:5]
  c = config()
  if int(num_processes) > 1:
    c.distributed.coordinator_address = f'127.0.0.1:{port}'
    c.distributed.num_processes = int(num_processes)
    c.distributed.process_id = int(process_id)
    c.distributed.timeout_s = 120
    c.distributed.mode = 'on'

  from varrl_jax import distributed

  distributed.initialize(c)

  import jax

  from varrl_jax import train
  from varrl_jax.rewards.pool import OcrPool

  with OcrPool(ReadsWhenBright, num_workers=0) as pool:
    train.train(c, workdir, pool=pool)
  print(
    f'process {jax.process_index()} of {jax.process_count()}: done on '
    f'{jax.device_count()} devices'
  )


if __name__ == '__main__':
  main(sys.argv)
