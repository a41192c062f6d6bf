"""The official Infinity scale schedules, as data.

Source: FoundationVision/Infinity ``infinity/utils/dynamic_resolution.py``
(commit 4c27bbb54a9918847a2fe56b0fbe31a8523791a1): the table ``ratio2hws``
(h / w ratio -> 13 token grids (h, w)), its transposes for the inverse ratios
(keyed ``int(1 / ratio * 1000) / 1000``), and ``dynamic_resolution_h_w[ratio]
[pn]`` = the first 7 / 10 / 12 / 13 grids for pn '0.06M' / '0.25M' /
'0.60M' / '1M', at ``pixel = last grid * 16`` (their ``vae_stride``).
``tools/run_infinity.py`` picks ``dynamic_resolution_h_w[h_div_w_template]
[pn]['scales']`` and sets every t to 1, so an image schedule is a tuple of
(h, w) grids here. At 1:1: 256² has 7 scales (1 .. 16), 512² 10 (1 .. 32),
768² 12 (1 .. 48) and 1024² 13 (1 .. 64).

These are the transformer's grids. With ``apply_spatial_patchify`` (8B, a
VAE of stride 8) the tokenizer's grids are twice as large per side
(`vae_grids`), each transformer token holding a 2x2 patch of VAE bits.
"""

from __future__ import annotations

import numpy as np

VAE_STRIDE = 16  # pixels per transformer token side (both 2B and 8B)
SCALES_PER_PN = {'0.06M': 7, '0.25M': 10, '0.60M': 12, '1M': 13}

# Their ratio2hws: h / w -> the 13 grids (h, w), coarse to fine.
_RATIO2HWS = {
  1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20),
          (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)),
  1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20),
          (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)),
  1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18),
          (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)),
  1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18),
          (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)),
  1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16),
          (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)),
  2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15),
          (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)),
  2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12),
          (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)),
  3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12),
          (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)),
}  # fmt: skip


def _all_ratios() -> dict[float, tuple[tuple[int, int], ...]]:
  out = dict(_RATIO2HWS)
  for ratio, hws in _RATIO2HWS.items():
    if ratio != 1.0:
      out[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in hws)
  return out


RATIO2HWS = _all_ratios()
H_DIV_W_TEMPLATES = tuple(RATIO2HWS)  # their h_div_w_templates, same order


def nearest_template(h_div_w: float) -> float:
  """The template ratio closest to ``h_div_w`` (their argmin over templates)."""
  templates = np.array(H_DIV_W_TEMPLATES)
  return float(templates[np.argmin(np.abs(h_div_w - templates))])


def scale_schedule(h_div_w: float = 1.0, pn: str = '1M') -> tuple[tuple[int, int], ...]:
  """The transformer's grids ((h_s, w_s), s = 0..S-1) of their
  ``dynamic_resolution_h_w[h_div_w][pn]['scales']`` (t dropped).

  ``h_div_w`` must be one of `H_DIV_W_TEMPLATES` (see `nearest_template`);
  ``pn`` one of '0.06M', '0.25M', '0.60M', '1M'.
  """
  if pn not in SCALES_PER_PN:
    raise ValueError(f'pn={pn!r}: expected one of {tuple(SCALES_PER_PN)}')
  if h_div_w not in RATIO2HWS:
    raise ValueError(
      f'h_div_w={h_div_w!r}: not an Infinity template; nearest is '
      f'{nearest_template(h_div_w)} (templates: {H_DIV_W_TEMPLATES})'
    )
  return RATIO2HWS[h_div_w][: SCALES_PER_PN[pn]]


def pixel_size(h_div_w: float = 1.0, pn: str = '1M') -> tuple[int, int]:
  """(H, W) of the image: last grid * 16 (their ``pixel``)."""
  h, w = scale_schedule(h_div_w, pn)[-1]
  return h * VAE_STRIDE, w * VAE_STRIDE


def vae_grids(
  grids: tuple[tuple[int, int], ...], apply_spatial_patchify: bool
) -> tuple[tuple[int, int], ...]:
  """The tokenizer's grids: ``grids`` itself, or 2h x 2w with the 2x2 spatial
  patchify of 8B (their ``vae_scale_schedule``)."""
  k = 2 if apply_spatial_patchify else 1
  return tuple((k * h, k * w) for h, w in grids)
