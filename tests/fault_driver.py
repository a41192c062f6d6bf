"""`python -m varrl_jax.train` with one fault injected (for tests/test_faults.py).

  python -m tests.fault_driver --fault=nan_step:1 --config=configs/tiny.py ...
  python -m tests.fault_driver --fault=ocr_crash_hang:DIR --config=... ...

Runs `varrl_jax.train.main` as its command line does (the same flag parser,
one-line errors and exit codes) after patching one thing:

- ``nan_step:N``: call N (0-based) of the jitted GRPO train step gets NaN
  teacher-forced inputs, so the model's logits, the loss and every gradient
  are NaN: a divergence inside the step, while the rewards stay finite.
- ``ocr_crash_hang:DIR``: the OCR engine in the workers of the real
  `OcrPool` of ``config.ocr`` (spawned processes, its timeouts and retries)
  answers 'OPEN' over the whole image until the first RL update starts
  (the trainer creates ``DIR/rl``); from then on it kills its process
  (``os._exit``) on the first image it reads, and hangs past
  ``config.ocr.timeout_s`` on every read of one other image. It leaves
  ``DIR/crashed`` and ``DIR/hung`` (the two images' digests) as evidence.

Module level imports nothing heavy: OCR workers import this module.
"""

from __future__ import annotations

import hashlib
import os
import time


def _claim(path: str, text: str) -> bool:
  """Creates ``path`` holding ``text`` unless it exists; True if this call did
  (atomic across processes)."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  return True


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


class CrashHangEngine:
  """OCR engine of ``ocr_crash_hang`` (module docstring)."""

  def __init__(self, marks: str):
    self.marks = marks

  def read(self, image):
    from varrl_jax.rewards.types import OcrResult, OcrWord

    if os.path.exists(os.path.join(self.marks, 'rl')):
      digest = hashlib.sha1(image.tobytes()).hexdigest()
      crashed = os.path.join(self.marks, 'crashed')
      hung = os.path.join(self.marks, 'hung')
      if _claim(crashed, digest):
        os._exit(3)
      if _read(crashed) != digest and (_claim(hung, digest) or _read(hung) == digest):
        while True:
          time.sleep(3600)
    height, width = image.shape[:2]
    box = (0.0, 0.0, float(width), float(height))
    return OcrResult(words=(OcrWord('OPEN', box, 0.9),))


def _nan_at_step(n: int) -> None:
  import numpy as np

  from varrl_jax.rl import grpo

  make = grpo.make_train_step

  def make_faulty(*args, **kwargs):
    step = make(*args, **kwargs)
    calls = [0]

    def faulty(state, batch, *rest):
      calls[0] += 1
      if calls[0] - 1 == n:
        # NaN activations: the model itself returns NaN logits.
        batch = dict(batch, inputs=batch['inputs'] * np.float32('nan'))
      return step(state, batch, *rest)

    return faulty

  grpo.make_train_step = make_faulty


def _ocr_crash_hang(marks: str) -> None:
  import functools

  from tests import fault_driver
  from varrl_jax.rewards import service
  from varrl_jax.rl import loop

  os.makedirs(marks, exist_ok=True)
  service.engine_factory = lambda config, engine=None: functools.partial(
    fault_driver.CrashHangEngine, marks
  )
  run_update = loop.Trainer.run_update

  def marked(self, update, prompts, key):
    open(os.path.join(marks, 'rl'), 'a').close()
    return run_update(self, update, prompts, key)

  loop.Trainer.run_update = marked


def inject(fault: str) -> None:
  """Applies ``fault`` (module docstring) to this process."""
  kind, _, arg = fault.partition(':')
  if kind == 'nan_step':
    _nan_at_step(int(arg))
  elif kind == 'ocr_crash_hang':
    _ocr_crash_hang(arg)
  else:
    raise ValueError(f'--fault={fault!r}: expected nan_step:N or ocr_crash_hang:DIR')


if __name__ == '__main__':
  from absl import app, flags

  from varrl_jax import cli, train

  _FAULT = flags.DEFINE_string('fault', None, 'nan_step:N | ocr_crash_hang:DIR')

  def main(argv):
    inject(_FAULT.value)
    train.main(argv)

  flags.mark_flags_as_required(['config', 'fault'])
  app.run(main, flags_parser=cli.parse_flags)
