"""Synthetic CVTG-style text-rendering data, fully determined by a seed.

Each example is a prompt such as ``a wooden sign on a wall that reads 'OPEN'``
with one or two quoted target words, the targets as a separate list (like
CVTG-2K's ``sentence_list``), and an image of those words rendered with PIL
from DejaVu fonts on a simple background, plus the pixel box of each word.

Determinism: example ``i`` of ``SyntheticTextDataset(split, size, seed)`` is a
pure function of ``(seed, split, i)`` and the image size. The prompt and the
rendering draw from two independent child seeds, so :func:`prompts` gives the
same prompts as the dataset without rendering anything. Bytes are identical for
a fixed Pillow/FreeType build and font set (``meta['font_file']`` says which
file was used).

Splits, and why they never leak into each other:

* Words are partitioned by a stable hash (``blake2b`` of the word):
  ``hash % 10 == 0`` marks a *held-out word* (about 10 %). The partition
  depends on the word alone, so editing ``words.txt`` never moves other words.
  ``train`` and ``heldout`` only ever draw targets from the train words;
  ``heldout_words`` only draws targets from the held-out words. Hence no
  held-out word is ever a target (or rendered) in ``train``.
* A prompt is the tuple ``(words, carrier, template)``. The predicate
  :func:`is_reserved_combo` is true when the template is one of the reserved
  held-out templates, or some ``(carrier, word)`` pair is reserved (hash,
  1 in 10), or the ``(word-set, template)`` pair is reserved (hash, 1 in 16).
  ``train`` rejection-samples until the predicate is false, ``heldout``
  until it is true, so their tuples are disjoint by construction.
* The prompt string determines its tuple: neither templates nor carriers
  contain a quote, so the quoted span is exactly the targets, and the rest of
  the string is distinct for every ``(template, carrier)`` pair (checked by a
  test). Disjoint tuples therefore give disjoint prompt strings.

Boxes are ``(x0, y0, x1, y1)`` ink boxes in pixels, x the column and y the
row, with exclusive ends: ``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import importlib.util
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PixelBox = tuple[int, int, int, int]
SeedLike = int | np.random.SeedSequence | np.random.Generator

SPLITS = ('train', 'heldout', 'heldout_words')
_SPLIT_CODES = {'train': 0, 'heldout': 1, 'heldout_words': 2}

# Hash moduli of the split partitions: 1 in N is reserved / held out.
_HELDOUT_WORD_MOD = 10
_CARRIER_WORD_MOD = 10
_WORDSET_TEMPLATE_MOD = 16

_TWO_WORD_PROB = 0.35
_MAX_TRIES = 1000


@dataclasses.dataclass(frozen=True)
class Template:
  """A prompt template with ``{a_carrier}`` and ``{text}`` slots."""

  text: str
  heldout: bool = False


@dataclasses.dataclass(frozen=True)
class Carrier:
  """The object the text is on; ``tone`` steers the background brightness."""

  name: str
  tone: str = 'any'  # 'any' | 'dark' | 'light'


TEMPLATES: tuple[Template, ...] = (
  Template('{a_carrier} on a wall that reads {text}'),
  Template('a photo of {a_carrier} that says {text}'),
  Template('{a_carrier} with {text} written on it'),
  Template('a close-up photo of {a_carrier} showing the text {text}'),
  Template('{a_carrier} displaying {text} in large letters'),
  Template('a street scene with {a_carrier} that reads {text}'),
  Template('{a_carrier} printed with {text}'),
  Template('a picture of {a_carrier}, the text on it says {text}'),
  Template('{a_carrier} in a shop window reading {text}'),
  Template('a simple flat illustration of {a_carrier} labeled {text}'),
  Template('{text} written on {a_carrier}'),
  Template('a high quality photo of {a_carrier} with the text {text}'),
  # Reserved: never used by the train split.
  Template('a vintage photograph of {a_carrier} that reads {text}', heldout=True),
  Template('{a_carrier} hanging above a doorway, it says {text}', heldout=True),
  Template('the words {text} painted on {a_carrier}', heldout=True),
)

CARRIERS: tuple[Carrier, ...] = (
  Carrier('wooden sign'),
  Carrier('poster'),
  Carrier('banner'),
  Carrier('shop front'),
  Carrier('t-shirt'),
  Carrier('label'),
  Carrier('neon sign', 'dark'),
  Carrier('chalkboard', 'dark'),
  Carrier('street sign'),
  Carrier('billboard'),
  Carrier('book cover'),
  Carrier('coffee mug'),
  Carrier('menu board', 'dark'),
  Carrier('sticker'),
  Carrier('postcard', 'light'),
  Carrier('door plaque'),
  Carrier('tote bag'),
  Carrier('road sign'),
  Carrier('storefront awning'),
  Carrier('paper note', 'light'),
  Carrier('metal plate'),
  Carrier('flag'),
  Carrier('whiteboard', 'light'),
  Carrier('cardboard box', 'light'),
  Carrier('price tag', 'light'),
  Carrier('enamel badge'),
)

# (style, file name, fallback style). fonts-dejavu-core ships the first six;
# the condensed faces come from fonts-dejavu-extra and fall back when absent.
_FONT_STYLES: tuple[tuple[str, str, str | None], ...] = (
  ('sans', 'DejaVuSans.ttf', None),
  ('sans-bold', 'DejaVuSans-Bold.ttf', 'sans'),
  ('serif', 'DejaVuSerif.ttf', 'sans'),
  ('serif-bold', 'DejaVuSerif-Bold.ttf', 'serif'),
  ('mono', 'DejaVuSansMono.ttf', 'sans'),
  ('mono-bold', 'DejaVuSansMono-Bold.ttf', 'mono'),
  ('sans-condensed-bold', 'DejaVuSansCondensed-Bold.ttf', 'sans-bold'),
  ('serif-condensed', 'DejaVuSerifCondensed.ttf', 'serif'),
)

FONT_STYLES = tuple(style for style, _, _ in _FONT_STYLES)
BACKGROUNDS = ('solid', 'gradient', 'noise')
PLACEMENTS = ('random', 'centered')


@dataclasses.dataclass(frozen=True)
class Variety:
  """How varied the data is: words per prompt, fonts, backgrounds, placement.

  The default is the full variety. A narrower one (``configs/tiny.py`` uses
  one centred word per prompt in monospaced faces) suits small canvases and
  short CPU runs. Part of the data's identity: the same seed with another
  variety gives other examples.

  ``placement``: ``'random'`` draws the glyph size (60-100 % of the largest
  that fits), the alignment and the position; ``'centered'`` draws every
  word at one size per font and canvas (the largest at which the longest
  word of ``words.txt`` fits; a wider word shrinks to fit) and centres it, so
  a letter's place follows from its place in the word alone.
  """

  max_words: int = 2
  fonts: tuple[str, ...] = FONT_STYLES
  backgrounds: tuple[str, ...] = BACKGROUNDS
  placement: str = 'random'

  def __post_init__(self):
    if self.max_words not in (1, 2):
      raise ValueError(f'data.max_words must be 1 or 2, got {self.max_words}')
    for name, got, allowed in (
      ('fonts', self.fonts, FONT_STYLES),
      ('backgrounds', self.backgrounds, BACKGROUNDS),
    ):
      if not got:
        raise ValueError(f'data.{name} is empty; choose from {allowed}')
      bad = [x for x in got if x not in allowed]
      if bad:
        raise ValueError(f'data.{name}: unknown {bad}; choose from {allowed}')
    if self.placement not in PLACEMENTS:
      raise ValueError(
        f'data.placement must be one of {PLACEMENTS}, got {self.placement!r}'
      )

  @classmethod
  def from_config(cls, data_config) -> Variety:
    """From ``config.data`` (empty tuples mean 'all')."""
    return cls(
      max_words=int(data_config.max_words),
      fonts=tuple(data_config.fonts) or FONT_STYLES,
      backgrounds=tuple(data_config.backgrounds) or BACKGROUNDS,
      placement=str(data_config.get('placement', 'random')),
    )


FULL = Variety()

_PACKAGE_FONT_DIR = pathlib.Path(__file__).resolve().parent.parent / 'assets' / 'fonts'
_SYSTEM_FONT_DIR = pathlib.Path('/usr/share/fonts/truetype/dejavu')


@dataclasses.dataclass(frozen=True)
class SyntheticPrompt:
  """A prompt and its targets, without an image."""

  prompt: str
  targets: tuple[str, ...]
  carrier: str
  template_id: int
  split: str


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticExample:
  """One rendered example; ``image`` is uint8 ``[H, W, 3]``."""

  prompt: str
  targets: tuple[str, ...]
  image: np.ndarray
  boxes: tuple[PixelBox, ...]
  meta: dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticBatch:
  """Examples stacked for a host loop: ``images`` is uint8 ``[B, H, W, 3]``."""

  images: np.ndarray
  prompts: list[str]
  targets: list[list[str]]
  boxes: list[list[PixelBox]]


class FontsNotFoundError(FileNotFoundError):
  """No DejaVu font file was found in any search directory."""


# ----------------------------------------------------------------------------
# Words and split partitions.


@functools.cache
def load_words() -> tuple[str, ...]:
  """The shipped word list (``words.txt``), validated, in file order."""
  text = importlib.resources.files('varrl_jax.data').joinpath('words.txt').read_text()
  words = [ln.strip() for ln in text.splitlines()]
  words = [w for w in words if w and not w.startswith('#')]
  bad = [w for w in words if not re.fullmatch(r'[A-Z]{3,8}', w)]
  if bad:
    raise ValueError(f'words.txt: entries must be 3-8 letters A-Z: {bad[:5]}')
  if len(set(words)) != len(words):
    raise ValueError('words.txt has duplicate entries')
  return tuple(words)


def _stable_hash(*parts: str) -> int:
  # Python's hash() is salted per process; blake2b is stable everywhere.
  digest = hashlib.blake2b('\x1f'.join(parts).encode(), digest_size=8).digest()
  return int.from_bytes(digest, 'big')


def is_heldout_word(word: str) -> bool:
  """True for the ~10 % of words reserved for the ``heldout_words`` split."""
  return _stable_hash('word', word) % _HELDOUT_WORD_MOD == 0


@functools.cache
def split_words(split: str) -> tuple[str, ...]:
  """Vocabulary a split draws targets from (train words or held-out words)."""
  _check_split(split)
  want_heldout = split == 'heldout_words'
  return tuple(w for w in load_words() if is_heldout_word(w) == want_heldout)


def is_reserved_combo(words: Sequence[str], carrier: str, template_id: int) -> bool:
  """True iff the prompt tuple belongs to ``heldout`` (never to ``train``)."""
  template = TEMPLATES[template_id]
  if template.heldout:
    return True
  if any(
    _stable_hash('carrier-word', carrier, w) % _CARRIER_WORD_MOD == 0 for w in words
  ):
    return True
  word_set = ' '.join(sorted(words))
  # Keyed by template text, not index, so reordering templates changes nothing.
  return (
    _stable_hash('wordset-template', word_set, template.text) % _WORDSET_TEMPLATE_MOD
    == 0
  )


def _check_split(split: str) -> None:
  if split not in _SPLIT_CODES:
    raise ValueError(f'unknown split {split!r}; expected one of {SPLITS}')


# ----------------------------------------------------------------------------
# Prompts.


def format_prompt(words: Sequence[str], carrier: str, template_id: int) -> str:
  """Fills a template: targets are single-quoted and joined with 'and'."""
  text = ' and '.join(f"'{w}'" for w in words)
  article = 'an' if carrier[0] in 'aeiou' else 'a'
  return TEMPLATES[template_id].text.format(a_carrier=f'{article} {carrier}', text=text)


def _sample_prompt(
  rng: np.random.Generator, split: str, variety: Variety = FULL
) -> SyntheticPrompt:
  vocab = split_words(split)
  for _ in range(_MAX_TRIES):
    two = rng.random() < _TWO_WORD_PROB
    n = 2 if two and variety.max_words >= 2 else 1
    words = tuple(vocab[int(i)] for i in rng.choice(len(vocab), size=n, replace=False))
    carrier = CARRIERS[int(rng.integers(len(CARRIERS)))].name
    template_id = int(rng.integers(len(TEMPLATES)))
    if split != 'heldout_words':
      if is_reserved_combo(words, carrier, template_id) != (split == 'heldout'):
        continue
    prompt = format_prompt(words, carrier, template_id)
    return SyntheticPrompt(prompt, words, carrier, template_id, split)
  raise RuntimeError(f'could not sample a {split!r} prompt in {_MAX_TRIES} tries')


def _example_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
  _check_split(split)
  if index < 0:
    raise IndexError(f'negative example index {index}')
  return np.random.SeedSequence([seed, _SPLIT_CODES[split], index])


def _child(ss: np.random.SeedSequence, k: int) -> np.random.Generator:
  # Built directly rather than with ss.spawn(), which is stateful.
  return np.random.default_rng(
    np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, k))
  )


def prompts(
  split: str, n: int, seed: int = 0, start: int = 0, variety: Variety = FULL
) -> list[SyntheticPrompt]:
  """Prompts ``start .. start+n-1`` of a split, without rendering (fast).

  Equal to the prompts/targets of
  ``SyntheticTextDataset(split, _, seed, variety=variety)[i]``.
  """
  return [
    _sample_prompt(_child(_example_seed(seed, split, i), 0), split, variety)
    for i in range(start, start + n)
  ]


# ----------------------------------------------------------------------------
# Fonts.


def font_search_dirs() -> list[pathlib.Path]:
  """Directories searched for DejaVu fonts, in priority order."""
  dirs = [_PACKAGE_FONT_DIR]
  # find_spec locates matplotlib's bundled fonts without importing it.
  spec = importlib.util.find_spec('matplotlib')
  if spec is not None and spec.submodule_search_locations:
    for loc in spec.submodule_search_locations:
      dirs.append(pathlib.Path(loc) / 'mpl-data' / 'fonts' / 'ttf')
  dirs.append(_SYSTEM_FONT_DIR)
  return dirs


def find_fonts(
  search_dirs: Sequence[pathlib.Path] | None = None,
) -> dict[str, pathlib.Path]:
  """Maps every font style to a file, falling back to a related face.

  Raises:
    FontsNotFoundError: when no DejaVu file is found in any directory.
  """
  dirs = [
    pathlib.Path(d)
    for d in (font_search_dirs() if search_dirs is None else search_dirs)
  ]
  found: dict[str, pathlib.Path] = {}
  for style, filename, _ in _FONT_STYLES:
    for d in dirs:
      if (d / filename).is_file():
        found[style] = d / filename
        break
  if not found:
    looked = ', '.join(str(d) for d in dirs)
    raise FontsNotFoundError(
      'No DejaVu fonts found for the synthetic text data (looked for '
      f'DejaVuSans.ttf and friends in: {looked}). Fix: install the Debian '
      'package fonts-dejavu-core (`apt-get install -y fonts-dejavu-core`), '
      'or `pip install matplotlib` (it bundles DejaVu), or copy DejaVu*.ttf '
      f'into {_PACKAGE_FONT_DIR}.'
    )
  resolved: dict[str, pathlib.Path] = {}
  any_font = next(iter(found.values()))
  for style, _, fallback in _FONT_STYLES:
    # Fallbacks point to earlier styles, so they are already resolved.
    resolved[style] = found.get(style) or resolved.get(fallback or '', any_font)
  return resolved


@functools.cache
def _fonts() -> dict[str, pathlib.Path]:
  return find_fonts()


@functools.lru_cache(maxsize=512)
def _font(path: pathlib.Path, size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(str(path), size)


# ----------------------------------------------------------------------------
# Rendering.


def _luminance(rgb: np.ndarray) -> float:
  """WCAG relative luminance of an sRGB colour in [0, 255]."""
  c = np.asarray(rgb, np.float64) / 255.0
  lin = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
  return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a: np.ndarray, b: np.ndarray) -> float:
  """WCAG contrast ratio in [1, 21]; >= 4.5 is 'legible body text'."""
  la, lb = _luminance(a), _luminance(b)
  return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


_MIN_CONTRAST = 4.5


def _sample_colors(
  rng: np.random.Generator, tone: str, backgrounds: Sequence[str] = BACKGROUNDS
) -> dict[str, Any]:
  """Background (solid / gradient / noise) and a text colour that contrasts."""
  dark_bg = rng.random() < 0.5 if tone == 'any' else tone == 'dark'
  bg_lo, bg_hi = (0, 80) if dark_bg else (175, 256)
  fg_lo, fg_hi = (150, 256) if dark_bg else (0, 90)
  kind = backgrounds[int(rng.integers(len(backgrounds)))]
  c0 = rng.integers(bg_lo, bg_hi, size=3)
  c1 = (
    np.clip(c0 + rng.integers(-40, 41, size=3), bg_lo, bg_hi - 1)
    if kind == 'gradient'
    else c0
  )
  sigma = float(rng.uniform(3.0, 10.0)) if kind == 'noise' else 0.0
  # Worst-case background colours the text must stand out against.
  extremes = [c0, c1, np.clip(c0 + 2 * sigma, 0, 255), np.clip(c0 - 2 * sigma, 0, 255)]
  for _ in range(20):
    fg = rng.integers(fg_lo, fg_hi, size=3)
    if min(contrast_ratio(fg, e) for e in extremes) >= _MIN_CONTRAST:
      break
  else:
    fg = np.array([255, 255, 255] if dark_bg else [0, 0, 0])
  return {
    'background': kind,
    'bg_colors': (tuple(int(v) for v in c0), tuple(int(v) for v in c1)),
    'noise_sigma': sigma,
    'vertical': bool(rng.random() < 0.5),
    'text_color': tuple(int(v) for v in fg),
  }


def _background(
  rng: np.random.Generator, colors: dict[str, Any], h: int, w: int
) -> np.ndarray:
  c0, c1 = (np.array(c, np.float32) for c in colors['bg_colors'])
  n = h if colors['vertical'] else w
  t = np.linspace(0.0, 1.0, n, dtype=np.float32)
  ramp = c0 + (c1 - c0) * t[:, None]
  bg = np.broadcast_to(
    ramp[:, None, :] if colors['vertical'] else ramp[None, :, :], (h, w, 3)
  )
  if colors['noise_sigma'] > 0:
    # Luminance-only grain: looks like paper/film texture, not colour speckle.
    bg = bg + rng.normal(0.0, colors['noise_sigma'], size=(h, w, 1)).astype(np.float32)
  return np.clip(bg, 0, 255)


def _place(
  words: Sequence[str], layout: str, font: ImageFont.FreeTypeFont, align: str
) -> tuple[list[tuple[int, int]], int, int]:
  """Baseline-left origins of each word so their ink block starts at (0, 0).

  Returns the origins and the block's width and height.
  """
  boxes = [font.getbbox(w, anchor='ls') for w in words]
  if layout == 'two_lines':
    gap = max(1, round(0.15 * font.size))
    widths = [b[2] - b[0] for b in boxes]
    block_w = max(widths)
    origins, y = [], 0
    for (left, top, _, bottom), wd in zip(boxes, widths):
      off = {'left': 0, 'center': (block_w - wd) // 2, 'right': block_w - wd}[align]
      origins.append((off - left, y - top))
      y += bottom - top + gap
    return origins, block_w, y - gap
  # One line: advance by the word's length plus one space.
  space = font.getlength(' ')
  xs, x = [], 0.0
  for w in words:
    xs.append(round(x))
    x += font.getlength(w) + space
  left = min(x0 + b[0] for x0, b in zip(xs, boxes))
  right = max(x0 + b[2] for x0, b in zip(xs, boxes))
  top = min(b[1] for b in boxes)
  bottom = max(b[3] for b in boxes)
  return [(x0 - left, -top) for x0 in xs], right - left, bottom - top


def _max_size(
  words: Sequence[str],
  layout: str,
  path: pathlib.Path,
  avail_w: int,
  avail_h: int,
  strict: bool = True,
) -> int:
  """Largest integer font size whose block fits in ``avail_w x avail_h``.

  Below 4 px nothing is legible: that raises, or returns 0 if not ``strict``.
  """
  lo, hi = 0, max(4, avail_h * 2)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    _, bw, bh = _place(words, layout, _font(path, mid), 'left')
    if bw <= avail_w and bh <= avail_h:
      lo = mid
    else:
      hi = mid - 1
  if lo < 4:
    if not strict:
      return 0
    raise ValueError(
      f'canvas too small to render {list(words)} ({avail_w}x{avail_h} px free)'
    )
  return lo


@functools.lru_cache(maxsize=256)
def _fixed_size(
  n_words: int, layout: str, path: pathlib.Path, avail_w: int, avail_h: int
) -> int:
  """The one glyph size of ``placement='centered'`` for a font and canvas.

  The largest at which ``n_words`` words as long as the longest of
  ``words.txt`` fit, measured with 'O' (a capital of typical width).
  """
  longest = max(len(w) for w in load_words())
  return _max_size(('O' * longest,) * n_words, layout, path, avail_w, avail_h)


def render_words(
  words: Sequence[str],
  image_size: tuple[int, int],
  rng: np.random.Generator,
  tone: str = 'any',
  variety: Variety = FULL,
) -> tuple[np.ndarray, tuple[PixelBox, ...], dict[str, Any]]:
  """Renders ``words`` legibly on a ``(height, width)`` canvas.

  Returns the uint8 ``[H, W, 3]`` image, one ink box per word and render meta.
  """
  h, w = image_size
  colors = _sample_colors(rng, tone, variety.backgrounds)
  style = variety.fonts[int(rng.integers(len(variety.fonts)))]
  path = _fonts()[style]
  margin = max(1, round(0.06 * min(h, w)))
  avail_w, avail_h = w - 2 * margin, h - 2 * margin
  layout = 'single'
  if len(words) == 2:
    sizes = {
      lay: _max_size(words, lay, path, avail_w, avail_h, strict=False)
      for lay in ('one_line', 'two_lines')
    }
    if max(sizes.values()) < 4:
      raise ValueError(
        f'canvas too small to render {list(words)} ({avail_w}x{avail_h} px free)'
      )
    layout = 'two_lines' if rng.random() < 0.5 else 'one_line'
    other = 'one_line' if layout == 'two_lines' else 'two_lines'
    # A layout that forces much smaller glyphs hurts legibility: switch.
    if sizes[layout] < 0.8 * sizes[other]:
      layout = other
    s_max = sizes[layout]
  else:
    s_max = _max_size(words, layout, path, avail_w, avail_h)
  if variety.placement == 'centered':
    size = min(s_max, _fixed_size(len(words), layout, path, avail_w, avail_h))
    align = 'center'
    font = _font(path, size)
    origins, bw, bh = _place(words, layout, font, align)
    x_off = margin + (avail_w - bw) // 2
    y_off = margin + (avail_h - bh) // 2
  else:
    # Size varies down to 60 %, but never below ~28 px (or 90 % of the max on
    # small canvases): smaller glyphs stop being legible to OCR.
    lo = max(0.6 * s_max, min(0.9 * s_max, 28.0))
    size = max(4, int(rng.uniform(lo, s_max)))
    align = ('left', 'center', 'right')[int(rng.integers(3))]
    font = _font(path, size)
    origins, bw, bh = _place(words, layout, font, align)
    x_off = margin + int(rng.integers(0, avail_w - bw + 1))
    y_off = margin + int(rng.integers(0, avail_h - bh + 1))

  image = _background(rng, colors, h, w)
  fg = np.array(colors['text_color'], np.float32)
  # Words are drawn on a padded mask so any ink past the canvas is caught.
  pad = size
  boxes = []
  for word, (ox, oy) in zip(words, origins):
    mask = Image.new('L', (w + 2 * pad, h + 2 * pad), 0)
    ImageDraw.Draw(mask).text(
      (pad + x_off + ox, pad + y_off + oy), word, fill=255, font=font, anchor='ls'
    )
    x0, y0, x1, y1 = mask.getbbox()
    if x0 < pad or y0 < pad or x1 > pad + w or y1 > pad + h:
      raise AssertionError(f'{word!r} ink left the canvas; layout bug')
    alpha = np.asarray(mask, np.float32)[pad : pad + h, pad : pad + w, None] / 255.0
    image = image * (1.0 - alpha) + fg * alpha
    boxes.append((x0 - pad, y0 - pad, x1 - pad, y1 - pad))
  meta = {
    **colors,
    'font': style,
    'font_file': path.name,
    'font_size': size,
    'layout': layout,
    'align': align,
    'placement': variety.placement,
  }
  return np.round(image).astype(np.uint8), tuple(boxes), meta


# ----------------------------------------------------------------------------
# Examples and datasets.


def _make_from_rngs(
  prompt_rng: np.random.Generator,
  render_rng: np.random.Generator,
  split: str,
  image_size: tuple[int, int],
  variety: Variety = FULL,
) -> SyntheticExample:
  p = _sample_prompt(prompt_rng, split, variety)
  tone = next(c.tone for c in CARRIERS if c.name == p.carrier)
  image, boxes, meta = render_words(p.targets, image_size, render_rng, tone, variety)
  meta = {'split': split, 'carrier': p.carrier, 'template_id': p.template_id, **meta}
  return SyntheticExample(p.prompt, p.targets, image, boxes, meta)


def make_example(
  seed_or_rng: SeedLike,
  split: str = 'train',
  image_size: tuple[int, int] = (64, 128),
  variety: Variety = FULL,
) -> SyntheticExample:
  """One example, deterministic in the seed (or the generator's state).

  With an int or SeedSequence the prompt and the rendering use independent
  child streams; a Generator is consumed for the prompt, then the rendering.
  """
  _check_split(split)
  if isinstance(seed_or_rng, np.random.Generator):
    return _make_from_rngs(seed_or_rng, seed_or_rng, split, image_size, variety)
  ss = (
    seed_or_rng
    if isinstance(seed_or_rng, np.random.SeedSequence)
    else np.random.SeedSequence(seed_or_rng)
  )
  return _make_from_rngs(_child(ss, 0), _child(ss, 1), split, image_size, variety)


def collate(examples: Sequence[SyntheticExample]) -> SyntheticBatch:
  """Stacks examples of one image size into numpy arrays and lists."""
  return SyntheticBatch(
    images=np.stack([e.image for e in examples]),
    prompts=[e.prompt for e in examples],
    targets=[list(e.targets) for e in examples],
    boxes=[list(e.boxes) for e in examples],
  )


class SyntheticTextDataset:
  """Indexable synthetic dataset; item ``i`` depends only on (seed, split, i).

  ``size=None`` makes it unbounded: any index >= 0 works and ``len()`` raises.
  """

  def __init__(
    self,
    split: str = 'train',
    image_size: tuple[int, int] = (64, 128),
    seed: int = 0,
    size: int | None = None,
    variety: Variety = FULL,
  ):
    _check_split(split)
    self.variety = variety
    self.split = split
    self.image_size = (int(image_size[0]), int(image_size[1]))
    self.seed = int(seed)
    self.size = size

  def __len__(self) -> int:
    if self.size is None:
      raise TypeError('unbounded SyntheticTextDataset (size=None) has no len()')
    return self.size

  def __getitem__(self, index: int) -> SyntheticExample:
    if self.size is not None:
      if index < 0:
        index += self.size
      if not 0 <= index < self.size:
        raise IndexError(f'index {index} out of range for size {self.size}')
    return make_example(
      _example_seed(self.seed, self.split, index),
      self.split,
      self.image_size,
      self.variety,
    )

  def __iter__(self) -> Iterator[SyntheticExample]:
    i = 0
    while self.size is None or i < self.size:
      yield self[i]
      i += 1

  def prompts(self, n: int, start: int = 0) -> list[SyntheticPrompt]:
    """Prompt/targets of items ``start .. start+n-1`` without rendering."""
    return prompts(self.split, n, self.seed, start, self.variety)

  def get_batch(self, indices: Sequence[int]) -> SyntheticBatch:
    """Renders and stacks the given items."""
    return collate([self[int(i)] for i in indices])
