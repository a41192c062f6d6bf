"""Step-indexed streams of rendered synthetic batches, prefetched by a thread.

Batch ``t`` of a stream holds examples ``[t B, (t + 1) B)`` of the unbounded
``SyntheticTextDataset(split, image_size, seed)``, so a training run's data
is a pure function of (seed, batch size) and resuming at step ``t`` needs no
iterator state: start the stream at ``t``.

Rendering is numpy + PIL on the host; `prefetch` runs it in a background
thread so it overlaps the jitted step (XLA releases the GIL while it runs).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from varrl_jax.data import synthetic
from varrl_jax.models import text as text_lib

Batch = dict[str, np.ndarray]


def synthetic_batches(
  split: str,
  image_size: tuple[int, int],
  seed: int,
  batch_size: int,
  text_len: int | None = None,
  start_step: int = 0,
  variety: synthetic.Variety = synthetic.FULL,
) -> Iterator[Batch]:
  """Endless batches ``{'images': uint8 [B, H, W, 3]}`` from step ``start_step``.

  With ``text_len`` the batch also holds the encoded prompts,
  ``'text_ids'`` int32 [B, text_len] and ``'text_mask'`` bool [B, text_len].
  """
  ds = synthetic.SyntheticTextDataset(
    split, image_size, seed=seed, size=None, variety=variety
  )
  step = start_step
  while True:
    examples = [ds[i] for i in range(step * batch_size, (step + 1) * batch_size)]
    batch = {'images': np.stack([e.image for e in examples])}
    if text_len is not None:
      ids, mask = text_lib.encode([e.prompt for e in examples], text_len)
      batch['text_ids'], batch['text_mask'] = ids, mask
    yield batch
    step += 1


class _End:
  pass


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
  """Yields the items of ``iterator``, produced ``depth`` ahead by a thread.

  ``depth = 0`` iterates in the caller's thread. An exception in the producer
  is re-raised in the consumer. The thread is a daemon and stops at the next
  item once the returned generator is closed or garbage-collected.
  """
  if depth <= 0:
    yield from iterator
    return
  items: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def produce():
    try:
      for item in iterator:
        while not stop.is_set():
          try:
            items.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      items.put(_End())
    except BaseException as e:  # handed to the consumer, raised there
      items.put(e)

  thread = threading.Thread(target=produce, name='prefetch', daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if isinstance(item, _End):
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
