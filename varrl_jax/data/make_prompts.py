r"""Writes multi-region text-rendering prompts for RL, like CVTG-2K but not CVTG-2K.

  python -m varrl_jax.data.make_prompts --n=20000 --regions=2..5 \
      --out=prompts.jsonl [--seed=0] [--cvtg=/data/CVTG-2K] [--overwrite]

Each line is ``{"prompt": ..., "targets": [...]}``: a scene, then R carriers
(a sign, a mug, a jersey ...) each with a quoted text of 1-4 words and
maybe a style, then maybe a mood, e.g.::

  A cozy bookstore window with a chalkboard reading 'OPEN LATE' and a glossy
  poster that says 'Golden Harbor' in neon pink script, warm evening light.

``targets`` are the quoted texts in order (``cvtg.quoted_texts(prompt)``
gives them back: single quotes, as CVTG-2K and its scorer use). The region
count cycles through ``--regions`` (``A..B`` or ``R``), so every count has
the same share. Templates and words are our own (`data.prompt_templates`).

Deterministic: the file is a function of (n, regions, seed) alone; no prompt
repeats (compared with whitespace collapsed and case folded), and a longer
``--n`` extends a shorter one. With ``--cvtg=ROOT`` (a local CVTG-2K copy,
`data.cvtg`) a prompt equal to a CVTG-2K prompt under that comparison is
dropped and replaced by the next one; the count is reported. The RL source
``config.rl.prompts='generated:n=N,regions=A..B,seed=S'`` (`prompt_sources`)
builds the same list in-process. The file is written whole (temp + rename);
an existing ``--out`` is an error unless ``--overwrite``. Bad flags: one
``error:`` line, exit code 2.
"""

from __future__ import annotations

import functools
import json
import random
import sys

from absl import app, flags

from varrl_jax.data import prompt_templates as T

Prompt = tuple[str, tuple[str, ...]]  # (prompt, targets)

QUOTE = "'"
MAX_REGIONS = 8

_N = flags.DEFINE_integer('n', 20000, 'Number of prompts.')
_REGIONS = flags.DEFINE_string('regions', '2..5', 'Text regions per prompt: A..B or R.')
_SEED = flags.DEFINE_integer('seed', 0, 'Generation seed.')
_OUT = flags.DEFINE_string('out', None, 'Output JSONL path (local or gs://).')
_CVTG = flags.DEFINE_string(
  'cvtg', '', 'CVTG-2K root: drop any prompt equal to one of its prompts.'
)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing --out.')


def normalize(prompt: str) -> str:
  """The comparison form of a prompt: whitespace collapsed, case folded."""
  return ' '.join(prompt.split()).casefold()


def parse_regions(text: str) -> tuple[int, int]:
  """``'2..5'`` -> (2, 5), ``'3'`` -> (3, 3); ValueError naming the value."""
  parts = str(text).strip().split('..')
  try:
    lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
  except ValueError:
    lo, hi = 0, -1
  if not 1 <= lo <= hi <= MAX_REGIONS:
    raise ValueError(
      f'regions {text!r}: expected R or A..B with 1 <= A <= B <= {MAX_REGIONS}'
    )
  return lo, hi


# Vowel letters that sound like a consonant ('a university', 'a one-way
# sign', 'a European cafe'); our word lists' only exceptions to the rule.
_CONSONANT_SOUND = ('uni', 'use', 'one', 'eu')


def _article(phrase: str) -> str:
  p = phrase.lower()
  if p.startswith(_CONSONANT_SOUND):
    return 'a'
  return 'an' if p[0] in 'aeiou' else 'a'


def _case(rng: random.Random, words: list[str]) -> str:
  r = rng.random()
  if r < 0.55:
    return ' '.join(w.upper() for w in words)
  if r < 0.9:
    return ' '.join(w.capitalize() for w in words)
  return ' '.join(w.lower() for w in words)


def _text(rng: random.Random) -> str:
  """One quoted text of 1-4 words (letters and digits only)."""
  c = rng.choice
  pattern = rng.randrange(9)
  if pattern == 0:
    words = [c(T.NOUNS)]
  elif pattern == 1:
    words = [c(T.ADJECTIVES), c(T.NOUNS)]
  elif pattern == 2:
    words = c(T.PHRASES).split()
  elif pattern == 3:
    words = ['THE', c(T.ADJECTIVES), c(T.NOUNS)]
  elif pattern == 4:
    words = [c(T.VERBS), 'THE', c(T.NOUNS)]
  elif pattern == 5:
    words = [c(T.ADJECTIVES), c(T.NOUNS), c(T.NOUNS)]
  elif pattern == 6:
    number = [str(rng.randint(1, 99)), f'SINCE {rng.randint(1950, 2024)}']
    lead = [f'{c(T.NUMBER_LEADS)} {number[0]}', f'{number[0]} {c(T.NUMBER_TAILS)}']
    words = c(lead + number[1:]).split()
  elif pattern == 7:
    words = [c(T.VERBS), c(T.ADJECTIVES), c(T.NOUNS)]
  else:
    words = ['THE', c(T.ADJECTIVES), c(T.NOUNS), c(T.NOUNS)]
  return _case(rng, words)


def _prompt(rng: random.Random, regions: int) -> Prompt:
  """One prompt with ``regions`` quoted texts (module docstring)."""
  setting = rng.choice(sorted(T.SETTINGS))
  scenes, carriers = T.SETTINGS[setting]
  scene = rng.choice(scenes)
  texts: list[str] = []
  while len(texts) < regions:
    t = _text(rng)
    if t.casefold() not in {x.casefold() for x in texts}:
      texts.append(t)
  parts = []
  for carrier, text in zip(rng.sample(carriers + T.GENERIC_CARRIERS, regions), texts):
    if rng.random() < 0.3:
      carrier = f'{rng.choice(T.CARRIER_LOOKS)} {carrier}'
    part = rng.choice(T.REGION_FORMS).format(
      c=f'{_article(carrier)} {carrier}', t=f'{QUOTE}{text}{QUOTE}'
    )
    if rng.random() < 0.35:
      part += f' in {rng.choice(T.STYLES)}'
    parts.append(part)
  listed = parts[0] if regions == 1 else ', '.join(parts[:-1]) + ' and ' + parts[-1]
  article = _article(scene)
  prompt = rng.choice(T.SCENE_FORMS).format(
    scene=f'{article.capitalize()} {scene}',
    scene_lower=f'{article} {scene}',
    regions=listed,
  )
  if rng.random() < 0.6:
    prompt += f', {rng.choice(T.MOODS)}'
  return prompt + '.', tuple(texts)


def generate(
  n: int,
  regions: tuple[int, int] = (2, 5),
  seed: int = 0,
  exclude: frozenset[str] = frozenset(),
) -> tuple[list[Prompt], int]:
  """(prompts, dropped): the first ``n`` distinct prompts of the seeded stream
  whose `normalize`-d form is not in ``exclude``; ``dropped`` counts those
  skipped for being in ``exclude``. Prompt i has ``lo + i % (hi - lo + 1)``
  regions."""
  if n < 1:
    raise ValueError(f'n={n}: expected at least 1 prompt')
  lo, hi = regions
  rng = random.Random(seed)
  out: list[Prompt] = []
  seen: set[str] = set()
  dropped, tries = 0, 0
  while len(out) < n:
    tries += 1
    if tries > 20 * n + 1000:
      raise ValueError(f'only {len(out)} distinct prompts after {tries - 1} tries')
    prompt, targets = _prompt(rng, lo + len(out) % (hi - lo + 1))
    key = normalize(prompt)
    if key in seen:
      continue
    seen.add(key)
    if key in exclude:
      dropped += 1
      continue
    out.append((prompt, targets))
  return out, dropped


@functools.lru_cache(maxsize=4)
def cached(n: int, regions: tuple[int, int], seed: int) -> tuple[Prompt, ...]:
  """`generate` without exclusions, memoised (the RL source builds it often)."""
  return tuple(generate(n, regions, seed)[0])


def to_jsonl(prompts: list[Prompt]) -> str:
  return ''.join(
    json.dumps({'prompt': p, 'targets': list(t)}, ensure_ascii=False) + '\n'
    for p, t in prompts
  )


def run(
  n: int,
  regions: str,
  seed: int,
  out: str,
  cvtg_root: str = '',
  overwrite: bool = False,
) -> str:
  """Writes the file (module docstring); returns the summary line."""
  from varrl_jax import fs

  if not out:
    raise ValueError('--out is required (the JSONL file to write)')
  if n < 1:
    raise ValueError(f'--n={n}: expected at least 1 prompt')
  try:
    span = parse_regions(regions)
  except ValueError as e:
    raise ValueError(f'--regions: {e}') from None
  if fs.exists(out) and not overwrite:
    raise ValueError(f'--out={out} exists; pass --overwrite to replace it')
  exclude: frozenset[str] = frozenset()
  if cvtg_root:
    from varrl_jax.data import cvtg

    try:
      exclude = frozenset(normalize(e.prompt) for e in cvtg.load_cvtg(cvtg_root))
    except cvtg.DatasetError as e:
      raise ValueError(f'--cvtg={cvtg_root}: {e}') from None
  prompts, dropped = generate(n, span, seed, exclude)
  fs.write_text(out, to_jsonl(prompts))
  check = (
    f'; {dropped} equal to a CVTG-2K prompt dropped ({len(exclude)} compared)'
    if cvtg_root
    else ''
  )
  return (
    f'wrote {n} prompts ({span[0]}..{span[1]} regions, seed {seed}) to {out}{check}'
  )


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
    sys.exit(2)
  from varrl_jax import cli

  print(
    cli.run_reporting_errors(
      run,
      _N.value,
      _REGIONS.value,
      _SEED.value,
      _OUT.value,
      _CVTG.value,
      _OVERWRITE.value,
    )
  )


if __name__ == '__main__':
  from varrl_jax import cli

  app.run(main, flags_parser=cli.parse_flags)
