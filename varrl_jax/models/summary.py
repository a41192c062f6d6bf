r"""Parameter counts per module from abstract shapes (nothing is allocated).

  python -m varrl_jax.models.summary --config=configs/cvtg.py
  python -m varrl_jax.models.summary --config=configs/var.py:16

Last line: the total, e.g. ``total 7.07B parameters``. The line before it
gives the two parts as the official VAR training script reports them
(``[#para] VAE=108.95, VAR=310.28`` in millions: tokenizer and transformer).
"""

from __future__ import annotations

import collections

import jax
import numpy as np
from absl import app
from ml_collections import config_flags

from varrl_jax import cli
from varrl_jax.models.family import build_model

_CONFIG = None


def _define_flags():
  """Flags exist only when this module is the program (importable elsewhere)."""
  global _CONFIG
  _CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file.', lock_config=True
  )


def _fmt(n: int) -> str:
  for unit, div in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if n >= div:
      return f'{n / div:.2f}{unit}'
  return str(n)


def count_parameters(config) -> dict[str, int]:
  """{module path: parameter count} from `jax.eval_shape` of the init."""
  model = build_model(config)
  shapes = jax.eval_shape(model.init_boxed, jax.random.key(0))
  counts: dict[str, int] = collections.OrderedDict()
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  for path, leaf in flat:
    names = [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]
    names = [n for n in names if n not in ('params', 'value')]
    # Group by top-level component and its first sub-module.
    group = '/'.join(names[:2]) if len(names) > 2 else '/'.join(names[:1] + names[1:2])
    counts[group] = counts.get(group, 0) + int(np.prod(leaf.shape))
  return counts


def main(argv):
  del argv
  config = _CONFIG.value
  counts = count_parameters(config)
  model = build_model(config)
  print(
    f'{model.family} family: image {tuple(config.image_size)}, '
    f'{model.schedule.num_scales} scales, {model.schedule.num_tokens} image tokens'
    + (f' + {model.dims.prefix_len} prompt tokens' if model.dims.prefix_len else '')
  )
  width = max(len(k) for k in counts)
  for component in ('tokenizer', 'transformer'):
    sub = {k: v for k, v in counts.items() if k.startswith(component)}
    for k, v in sub.items():
      print(f'  {k:<{width}}  {v:>15,d}  {_fmt(v):>8}')
    print(
      f'{component + " total":<{width + 2}}  {sum(sub.values()):>15,d}  {_fmt(sum(sub.values())):>8}'
    )
  parts = {
    c: sum(v for k, v in counts.items() if k.startswith(c))
    for c in ('tokenizer', 'transformer')
  }
  print(
    f'[#para] VAE={parts["tokenizer"] / 1e6:.2f}, '
    f'VAR={parts["transformer"] / 1e6:.2f} (millions)'
  )
  total = sum(counts.values())
  if total >= 1e8:
    print(f'total {total / 1e9:.2f}B parameters')
  else:
    print(f'total {total / 1e6:.2f}M parameters')


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
