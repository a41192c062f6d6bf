"""Where RL prompts come from: ``config.rl.prompts``.

- ``'synthetic'``: the synthetic text-rendering 'train' stream
  (`data.synthetic`), seed ``config.rl.data_seed``; update u takes examples
  [u P, (u + 1) P). Targets are the quoted words.
- ``'classes:all'`` (ids 0 .. ``config.model.var.num_classes`` - 1),
  ``'classes:207,360,387'``, or ``'classes:@PATH'`` (a text file, one id a
  line; ``#`` starts a comment, blank lines are skipped): class-conditional
  prompts, the decimal id as the prompt string and no targets. Update u
  takes positions [u P, (u + 1) P) of an endless stream that walks a fresh
  seeded permutation of the ids each epoch (seed ``config.rl.data_seed``,
  epoch e = position // n). A listed id may repeat (it is drawn that much
  more often).

Either way the prompts of update u are a function of (config, u) alone, so a
resumed run continues exactly. P = ``config.rl.prompts_per_update``. Bad
input raises ValueError with one line naming the key (and file:line).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from varrl_jax import fs
from varrl_jax.data import synthetic

Prompt = tuple[str, tuple[str, ...]]  # (prompt, targets)

_TRAIN_STREAM, _EVAL_STREAM = 0, 1


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
    n, out, perms = len(self.ids), [], {}
    for i in range(start, start + size):
      epoch = i // n
      if epoch not in perms:
        perms[epoch] = np.random.default_rng([self.seed, salt, epoch]).permutation(n)
      out.append(self.ids[perms[epoch][i % n]])
    return out

  def batch(self, update: int, size: int) -> list[Prompt]:
    return [(str(c), ()) for c in self._stream(update * size, size, _TRAIN_STREAM)]

  def evaluation(self, size: int, seed: int) -> list[Prompt]:
    """``size`` prompts for the held-out evaluation: a permutation by ``seed``
    (config.eval.data_seed; another stream than training's), cycled."""
    return [
      (str(c), ()) for c in ClassPrompts(self.ids, seed)._stream(0, size, _EVAL_STREAM)
    ]


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


def from_config(config) -> SyntheticPrompts | ClassPrompts:
  """The prompt source of ``config.rl.prompts`` (checked; ValueError if bad)."""
  spec = config.rl.prompts
  if spec == 'synthetic':
    return SyntheticPrompts(
      config.rl.data_seed, synthetic.Variety.from_config(config.data)
    )
  if isinstance(spec, str) and spec.startswith('classes:'):
    return ClassPrompts(
      parse_classes(spec, config.model.var.num_classes), config.rl.data_seed
    )
  raise ValueError(
    f"config.rl.prompts={spec!r}: expected 'synthetic', 'classes:all', "
    "'classes:ID,ID,...' or 'classes:@FILE'"
  )
