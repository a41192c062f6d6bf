"""Where RL prompts come from: ``config.rl.prompts``.

- ``'synthetic'``: the synthetic text-rendering 'train' stream
  (`data.synthetic`), seed ``config.rl.data_seed``; update u takes examples
  [u P, (u + 1) P). Targets are the quoted words.
- ``'classes:all'`` (ids 0 .. ``config.model.var.num_classes`` - 1),
  ``'classes:207,360,387'``, or ``'classes:@PATH'`` (a text file, one id a
  line; ``#`` starts a comment, blank lines are skipped): class-conditional
  prompts, the decimal id as the prompt string and no targets. A listed id
  may repeat (it is drawn that much more often).
- Text prompt lists (`TextPrompts`), read whole and checked before anything
  compiles (`data.prompt_files`):
  ``'jsonl:PATH'`` (one ``{"prompt": ..., "targets": [...]}`` a line; local
  or gs://), ``'cvtg:ROOT'`` (a local CVTG-2K copy; targets per
  ``config.eval.cvtg_targets``), ``'tfds:NAME[,split=S][,data_dir=D]'`` (a
  TFDS dataset with a ``prompt`` and an optional ``targets`` feature, e.g.
  ``tfds:cvtg2k,split=test,data_dir=/data/tfds``; split 'train' by default),
  and ``'generated'`` / ``'generated:n=20000,regions=2..5,seed=0'``: the
  prompts ``python -m varrl_jax.data.make_prompts`` writes with those flags
  (the defaults shown), built in-process.

Order. Class ids and text lists are walked as an endless stream of seeded
permutations, a fresh one each epoch (seed ``config.rl.data_seed``, epoch
e = position // n); update u takes positions [u P, (u + 1) P). The prompts
of update u are a function of (config, u) alone, so a resumed run continues
exactly. P = ``config.rl.prompts_per_update``.

Held-out prompts. ``config.rl.heldout_prompts`` > 0 (text lists only) keeps
that many distinct prompts (>= 1: a count; < 1: a fraction of the distinct
prompts, at least one) out of training: those whose BLAKE2b digest of the
prompt text is smallest, so the choice depends on the list's content alone
(not on its order or a seed), and every copy of a held-out prompt leaves.
`TextPrompts.evaluation` gives them for train.py's before/after evaluation.

Bad input raises ValueError with one line naming the key (and file:line and
field for a JSONL file).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np

from varrl_jax import fs
from varrl_jax.data import make_prompts, prompt_files, synthetic

Prompt = tuple[str, tuple[str, ...]]  # (prompt, targets)

_TRAIN_STREAM, _EVAL_STREAM = 0, 1
GENERATED_DEFAULTS = {'n': 20000, 'regions': '2..5', 'seed': 0}


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, salt: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, salt, epoch]).permutation(n)


def epoch_stream(n: int, seed: int, salt: int, start: int, size: int) -> list[int]:
  """Indices ``start .. start + size - 1`` of the endless stream that walks a
  fresh permutation of range(n) each epoch (seeded by (seed, salt, epoch))."""
  return [
    int(_permutation(n, seed, salt, i // n)[i % n]) for i in range(start, start + size)
  ]


@dataclasses.dataclass(frozen=True)
class SyntheticPrompts:
  """The synthetic 'train' stream of `data.synthetic`."""

  seed: int
  variety: synthetic.Variety

  def batch(self, update: int, size: int) -> list[Prompt]:
    return [
      (p.prompt, tuple(p.targets))
      for p in synthetic.prompts(
        'train', size, seed=self.seed, start=update * size, variety=self.variety
      )
    ]


@dataclasses.dataclass(frozen=True)
class ClassPrompts:
  """Class ids in seeded per-epoch permutations (module docstring)."""

  ids: tuple[int, ...]
  seed: int

  def _stream(self, start: int, size: int, salt: int) -> list[int]:
    return [
      self.ids[i] for i in epoch_stream(len(self.ids), self.seed, salt, start, size)
    ]

  def batch(self, update: int, size: int) -> list[Prompt]:
    return [(str(c), ()) for c in self._stream(update * size, size, _TRAIN_STREAM)]

  def evaluation(self, size: int, seed: int) -> list[Prompt]:
    """``size`` prompts for the held-out evaluation: a permutation by ``seed``
    (config.eval.data_seed; another stream than training's), cycled."""
    return [
      (str(c), ()) for c in ClassPrompts(self.ids, seed)._stream(0, size, _EVAL_STREAM)
    ]


@dataclasses.dataclass(frozen=True, eq=False)
class TextPrompts:
  """A finite list of text prompts minus its held-out ones (module docstring).

  ``train``: the training records in storage order; ``heldout``: one record
  per held-out prompt, by digest; ``untargeted``: where the first record
  without targets is ('' if none).
  """

  spec: str
  train: tuple[Prompt, ...]
  heldout: tuple[Prompt, ...]
  seed: int
  untargeted: str = ''

  def batch(self, update: int, size: int) -> list[Prompt]:
    n = len(self.train)
    return [
      self.train[i]
      for i in epoch_stream(n, self.seed, _TRAIN_STREAM, update * size, size)
    ]

  def evaluation(self, size: int, seed: int) -> list[Prompt]:
    """The held-out prompts in an order seeded by ``seed`` (config.eval.
    data_seed), the first ``size`` of them (0: all); never repeated."""
    if not self.heldout:
      raise ValueError(
        f'config.rl.prompts={self.spec!r}: no held-out prompts to evaluate on '
        '(set config.rl.heldout_prompts)'
      )
    order = np.random.default_rng([seed, _EVAL_STREAM]).permutation(len(self.heldout))
    order = order[:size] if size > 0 else order
    return [self.heldout[i] for i in order]


def _digest(prompt: str) -> bytes:
  return hashlib.blake2b(prompt.encode('utf-8'), digest_size=8).digest()


def heldout_count(value: float, distinct: int) -> int:
  """How many of ``distinct`` prompts ``config.rl.heldout_prompts`` holds out."""
  key = f'config.rl.heldout_prompts={value!r}'
  if not value >= 0:
    raise ValueError(f'{key}: expected a count >= 1, a fraction in (0, 1), or 0')
  if value == 0:
    return 0
  if value < 1:
    count = max(1, round(value * distinct))
  elif value != int(value):
    raise ValueError(f'{key}: a count >= 1 must be a whole number')
  else:
    count = int(value)
  if count >= distinct:
    raise ValueError(
      f'{key}: holds out {count} of the {distinct} distinct prompts, leaving none to '
      'train on'
    )
  return count


def split_heldout(
  items: tuple[Prompt, ...], count: int
) -> tuple[tuple[Prompt, ...], tuple[Prompt, ...]]:
  """(train, heldout): the ``count`` distinct prompts of smallest digest leave
  (every copy); heldout has one record each, in digest order."""
  if count == 0:
    return items, ()
  first: dict[str, Prompt] = {}
  for item in items:
    first.setdefault(item[0], item)
  chosen = sorted(first, key=_digest)[:count]
  held = set(chosen)
  return tuple(x for x in items if x[0] not in held), tuple(first[p] for p in chosen)


def parse_generated(spec: str) -> tuple[int, tuple[int, int], int]:
  """(n, regions, seed) of ``generated[:n=N,regions=A..B,seed=S]``."""
  values = dict(GENERATED_DEFAULTS)
  body = spec[len('generated') :].removeprefix(':').strip()
  for item in (x.strip() for x in body.split(',') if x.strip()):
    key, eq, value = item.partition('=')
    if not eq or key.strip() not in values:
      raise ValueError(f'{item!r}: expected n=N, regions=A..B or seed=S')
    values[key.strip()] = value.strip()
  try:
    n, seed = int(values['n']), int(values['seed'])
  except ValueError:
    raise ValueError(
      f'n={values["n"]!r}, seed={values["seed"]!r}: expected integers'
    ) from None
  if n < 2:
    raise ValueError(f'n={n}: expected at least 2 prompts')
  return n, make_prompts.parse_regions(values['regions']), seed


def _read_list(config, spec: str) -> prompt_files.PromptList:
  kind, _, body = spec.partition(':')
  if kind == 'jsonl':
    return prompt_files.read_jsonl(body)
  if kind == 'cvtg':
    return prompt_files.read_cvtg(body, config.eval.cvtg_targets)
  if kind == 'tfds':
    return prompt_files.read_tfds(*prompt_files.parse_tfds_spec(body))
  return prompt_files.PromptList(make_prompts.cached(*parse_generated(spec)))


def text_prompts(config) -> TextPrompts:
  """The `TextPrompts` of a jsonl/cvtg/tfds/generated ``config.rl.prompts``."""
  spec = config.rl.prompts
  try:
    loaded = _read_list(config, spec)
    distinct = len({p for p, _ in loaded.items})
    count = heldout_count(config.rl.heldout_prompts, distinct)
  except ValueError as e:
    raise ValueError(f'config.rl.prompts={spec!r}: {e}') from None
  if loaded.untargeted and _needs_targets(config.rl.rewards):
    raise ValueError(
      f'config.rl.prompts={spec!r}: {loaded.untargeted}: no targets, but '
      f'config.rl.rewards={config.rl.rewards!r} has an ocr term, which needs them'
    )
  train, heldout = split_heldout(loaded.items, count)
  return TextPrompts(spec, train, heldout, config.rl.data_seed, loaded.untargeted)


def _needs_targets(rewards: str) -> bool:
  """Whether ``config.rl.rewards`` has the (registered) ``ocr`` term."""
  return any(
    item.strip().split(':')[0].strip() == 'ocr' for item in str(rewards).split(',')
  )


def _class_id(text: str, num_classes: int, where: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise ValueError(f'{where}: {text!r} is not a class id (an integer)') from None
  if not 0 <= value < num_classes:
    raise ValueError(
      f'{where}: class {value} is out of range 0..{num_classes - 1} '
      f'(config.model.var.num_classes={num_classes})'
    )
  return value


def parse_classes(spec: str, num_classes: int) -> tuple[int, ...]:
  """The ids of a ``classes:...`` spec (module docstring); ValueError otherwise."""
  key = f'config.rl.prompts={spec!r}'
  body = spec[len('classes:') :].strip()
  if body == 'all':
    ids = tuple(range(num_classes))
  elif body.startswith('@'):
    path = body[1:]
    try:
      text = fs.read_text(path)
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f'{key}: cannot read {path}: {e}') from None
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
      line = line.split('#', 1)[0].strip()
      if line:
        ids.append(_class_id(line, num_classes, f'{key}: {path}:{number}'))
    ids = tuple(ids)
  else:
    ids = tuple(
      _class_id(x.strip(), num_classes, key) for x in body.split(',') if x.strip()
    )
  if not ids:
    raise ValueError(f'{key}: no class ids')
  return ids


_TEXT_KINDS = ('jsonl:', 'cvtg:', 'tfds:', 'generated:')


def from_config(config) -> SyntheticPrompts | ClassPrompts | TextPrompts:
  """The prompt source of ``config.rl.prompts`` (checked; ValueError if bad)."""
  spec = config.rl.prompts
  text = isinstance(spec, str) and (spec == 'generated' or spec.startswith(_TEXT_KINDS))
  if text:
    return text_prompts(config)
  if config.rl.heldout_prompts:
    raise ValueError(
      f'config.rl.heldout_prompts={config.rl.heldout_prompts!r}: only for '
      f'jsonl/cvtg/tfds/generated prompts, not config.rl.prompts={spec!r} '
      '(synthetic prompts have held-out splits: config.eval.split)'
    )
  if spec == 'synthetic':
    return SyntheticPrompts(
      config.rl.data_seed, synthetic.Variety.from_config(config.data)
    )
  if isinstance(spec, str) and spec.startswith('classes:'):
    return ClassPrompts(
      parse_classes(spec, config.model.var.num_classes), config.rl.data_seed
    )
  raise ValueError(
    f"config.rl.prompts={spec!r}: expected 'synthetic', 'generated[:n=N,"
    "regions=A..B,seed=S]', 'jsonl:PATH', 'cvtg:ROOT', "
    "'tfds:NAME[,split=S][,data_dir=D]', 'classes:all', 'classes:ID,ID,...' "
    "or 'classes:@FILE'"
  )
