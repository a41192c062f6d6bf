r"""Edit distance and OCR-reward scoring: hand-written Python vs rapidfuzz.

Run from the repository root:

  python -m benchmarks.edit_distance
  python -m benchmarks.edit_distance --pairs=20000 --images=512 --repeats=7

``old`` is the bit-parallel Levenshtein in pure Python that
``varrl_jax/rewards/text.py`` used before rapidfuzz (kept below, verbatim but
for names); ``new`` is the module as it is. Both run side by side in one
process on the same inputs, alternating, ``--repeats`` times each (median):

1. ``levenshtein``, ``ned`` and ``similarity`` over ``--pairs`` random pairs
   of OCR-like strings (1-3 words of 1-12 letters, with typos);
2. the OCR reward's scoring (``rewards_for_batch``, both reward kinds) of
   ``--images`` images, each with 2-5 targets and a noisy OCR reading, the
   OCR engine not involved. For ``old`` the module's one distance function
   (``text._lev_distance``) is the old one, its prepared pattern cached per
   target string as the old ``_best_reading`` built it once per target.

Results are checked equal before timing. Prints one line per case, then
``edit_distance_speedup`` and ``ocr_scoring_speedup`` (old time / new time).
"""

from __future__ import annotations

import functools
import statistics
import string
import time

import numpy as np
from absl import app, flags

from varrl_jax.rewards import text
from varrl_jax.rewards.types import OcrResult, OcrWord

_PAIRS = flags.DEFINE_integer('pairs', 5000, 'String pairs for the distance functions.')
_IMAGES = flags.DEFINE_integer('images', 256, 'Images for the reward scoring.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs per case (median).')
_SEED = flags.DEFINE_integer('seed', 0, 'Data seed.')


class _OldPattern:
  """The pre-rapidfuzz distance (Myers 1999 / Hyyrö, Python big integers)."""

  def __init__(self, a: str):
    self.a = a
    self.peq: dict[str, int] = {}
    for i, ch in enumerate(a):
      self.peq[ch] = self.peq.get(ch, 0) | (1 << i)

  def distance(self, b: str) -> int:
    m = len(self.a)
    if not m or not b:
      return max(m, len(b))
    peq = self.peq
    full = (1 << m) - 1
    top = 1 << (m - 1)
    pv, mv, dist = full, 0, m
    for ch in b:
      eq = peq.get(ch, 0)
      xv = eq | mv
      xh = (((eq & pv) + pv) ^ pv) | eq
      ph = mv | ~(xh | pv)
      mh = pv & xh
      if ph & top:
        dist += 1
      elif mh & top:
        dist -= 1
      ph = (ph << 1) | 1
      mh <<= 1
      pv = (mh | ~(xv | ph)) & full
      mv = ph & xv
    return dist


def old_levenshtein(a: str, b: str) -> int:
  return 0 if a == b else _OldPattern(a).distance(b)


def old_ned(a: str, b: str) -> float:
  longest = max(len(a), len(b))
  return old_levenshtein(a, b) / longest if longest else 0.0


def old_similarity(a: str, b: str) -> float:
  return 1.0 - old_ned(a, b)


_cached_pattern = functools.lru_cache(maxsize=4096)(_OldPattern)


def _old_reward_distance(a: str, b: str) -> int:
  return _cached_pattern(a).distance(b)


def _word(rng) -> str:
  return ''.join(rng.choice(list(string.ascii_lowercase), size=rng.integers(1, 13)))


def _typo(s: str, rng) -> str:
  chars = list(s)
  for _ in range(rng.integers(0, 3)):
    i = int(rng.integers(0, len(chars) + 1))
    op = rng.integers(0, 3)
    if op == 0:
      chars.insert(i, rng.choice(list(string.ascii_lowercase)))
    elif chars and i < len(chars):
      if op == 1:
        del chars[i]
      else:
        chars[i] = rng.choice(list(string.ascii_lowercase))
  return ''.join(chars)


def make_pairs(n: int, rng) -> list[tuple[str, str]]:
  pairs = []
  for _ in range(n):
    a = ' '.join(_word(rng) for _ in range(rng.integers(1, 4)))
    b = _typo(a, rng) if rng.random() < 0.7 else _word(rng)
    pairs.append((a, b))
  return pairs


def make_images(n: int, rng) -> tuple[list[list[str]], list[OcrResult]]:
  """CVTG-2K-like: 2-5 targets of 1-3 words; OCR reads most, with typos,
  word by word or as lines, in shuffled order, plus some stray words."""
  targets, results = [], []
  for _ in range(n):
    ts = [
      ' '.join(_word(rng) for _ in range(rng.integers(1, 4)))
      for _ in range(rng.integers(2, 6))
    ]
    read = []
    for t in ts:
      if rng.random() < 0.8:
        t = _typo(t, rng)
        read.extend(t.split() if rng.random() < 0.5 else [t])
    read += [_word(rng) for _ in range(rng.integers(0, 3))]
    rng.shuffle(read)
    box = (0.0, 0.0, 1.0, 1.0)
    targets.append(ts)
    results.append(OcrResult(words=tuple(OcrWord(w, box, 0.9) for w in read)))
  return targets, results


def _seconds(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def compare(name: str, old_fn, new_fn, repeats: int, count: int, unit: str) -> float:
  """Alternates old and new ``repeats`` times; prints medians; returns ratio."""
  old_t, new_t = [], []
  for _ in range(repeats):
    old_t.append(_seconds(old_fn))
    new_t.append(_seconds(new_fn))
  old_m, new_m = statistics.median(old_t), statistics.median(new_t)
  ratio = old_m / new_m
  print(
    f'{name:<22} old {old_m / count * 1e6:8.2f} us/{unit}   '
    f'new {new_m / count * 1e6:8.2f} us/{unit}   {ratio:6.1f}x'
  )
  return ratio


def _score_all(targets, results):
  return [
    text.rewards_for_batch(targets, results, kind)
    for kind in ('comp_sim_pen', 'one_minus_ned')
  ]


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  pairs = make_pairs(_PAIRS.value, rng)
  targets, results = make_images(_IMAGES.value, rng)
  repeats = _REPEATS.value

  # Same answers first.
  for new_fn, old_fn in (
    (text.levenshtein, old_levenshtein),
    (text.ned, old_ned),
    (text.similarity, old_similarity),
  ):
    assert [new_fn(a, b) for a, b in pairs] == [old_fn(a, b) for a, b in pairs]
  new_scores = _score_all(targets, results)
  text._lev_distance, saved = _old_reward_distance, text._lev_distance
  try:
    old_scores = _score_all(targets, results)
  finally:
    text._lev_distance = saved
  for o, n in zip(old_scores, new_scores):
    for field in ('rewards', 'comp', 'sim', 'pen', 'failed'):
      np.testing.assert_array_equal(getattr(o, field), getattr(n, field))
    assert o.boxes == n.boxes
  print(f'{len(pairs)} pairs, {len(targets)} images: old and new results equal')

  ratios = []
  for name, old, new in (
    ('levenshtein', old_levenshtein, text.levenshtein),
    ('ned', old_ned, text.ned),
    ('similarity', old_similarity, text.similarity),
  ):
    ratios.append(
      compare(
        name,
        lambda f=old: [f(a, b) for a, b in pairs],
        lambda f=new: [f(a, b) for a, b in pairs],
        repeats,
        len(pairs),
        'pair',
      )
    )

  def old_scoring():
    text._lev_distance, saved = _old_reward_distance, text._lev_distance
    try:
      _cached_pattern.cache_clear()
      _score_all(targets, results)
    finally:
      text._lev_distance = saved

  scoring = compare(
    'ocr reward scoring',
    old_scoring,
    lambda: _score_all(targets, results),
    repeats,
    len(targets),
    'image',
  )
  print(f'edit_distance_speedup {statistics.median(ratios):.1f}x')
  print(f'ocr_scoring_speedup {scoring:.2f}x')


if __name__ == '__main__':
  app.run(main)
