"""Prompt sets for evaluation: CVTG-2K from a local copy, or synthetic splits.

A prompt set is a list of `EvalPrompt`: the prompt, its target strings and
the groups it is reported under (CVTG-2K: subset and region count;
synthetic: split and number of targets).
"""

from __future__ import annotations

import dataclasses

from varrl_jax.data import cvtg, synthetic


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
  prompt: str
  targets: tuple[str, ...]
  groups: dict
  key: str
  # Synthetic prompts only: (split, data seed, index, variety) of the example
  # whose render evaluates the OCR ceiling and the tokenizer (evaluator).
  example: tuple[str, int, int, synthetic.Variety] | None = None


def cvtg_prompts(
  root: str, limit: int = 0, targets: str = 'sentences'
) -> list[EvalPrompt]:
  """CVTG-2K (both subsets, 2-5 regions), grouped by subset and region count."""
  examples = cvtg.load_cvtg(root, max_examples=limit or None, target_source=targets)
  return [
    EvalPrompt(
      e.prompt, tuple(e.targets), {'subset': e.subset, 'regions': e.regions}, e.key
    )
    for e in examples
  ]


def synthetic_prompts(
  split: str, limit: int, seed: int = 0, variety: synthetic.Variety = synthetic.FULL
) -> list[EvalPrompt]:
  """The first ``limit`` prompts of a synthetic split (held-out by construction)."""
  if split not in ('train', 'heldout', 'heldout_words'):
    raise ValueError(
      f"unknown synthetic split {split!r}; choose 'heldout', 'heldout_words' or 'train'"
    )
  if limit <= 0:
    raise ValueError(
      'synthetic prompt sets are unbounded: set config.eval.num_prompts > 0'
    )
  return [
    EvalPrompt(
      p.prompt,
      tuple(p.targets),
      {'split': split, 'targets': len(p.targets)},
      f'{split}/{i}',
      (split, seed, i, variety),
    )
    for i, p in enumerate(synthetic.prompts(split, limit, seed, variety=variety))
  ]


def from_spec(
  spec: str,
  limit: int,
  seed: int = 0,
  cvtg_targets: str = 'sentences',
  variety: synthetic.Variety = synthetic.FULL,
):
  """``cvtg:/path/to/CVTG-2K`` or a synthetic split name."""
  if spec.startswith('cvtg:'):
    return cvtg_prompts(spec[len('cvtg:') :], limit, cvtg_targets)
  return synthetic_prompts(spec, limit, seed, variety)
