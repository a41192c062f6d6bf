"""Reference arrays from the official FoundationVision/Infinity BSQ tokenizer.

Runs THEIR code (``infinity/models/bsq_vae/`` and
``infinity/models/bitwise_self_correction.py`` from a checkout given by
``--infinity_repo``; nothing of it is copied here) at reduced size with seeded
random weights from `varrl_jax.convert.random_state.random_state_dict` (seed
0) and writes one compressed ``.npz`` (~200 KB). Needs a Python with torch,
numpy, einops, imageio, torchvision and safetensors (what their ``bsq_vae``
imports), not our JAX venv; no network, no GPU::

  git clone https://github.com/FoundationVision/Infinity /tmp/Infinity
  /tmp/env/bin/pip install torch torchvision numpy einops imageio safetensors
  /tmp/env/bin/python tools/infinity_vae_reference.py \\
    --infinity_repo=/tmp/Infinity --out=tests/models/data/infinity_vae_reference.npz

Their ``vae_model`` (``bsq_vae/vae.py``, as ``tools/run_infinity.py``'s
``load_visual_tokenizer`` calls it: schedule_mode 'dynamic', codebook_size =
2^d) builds the models, with ``base_ch`` and ``num_res_blocks`` (hard-coded
128 and 2 there) shrunk by wrapping its ``AutoEncoder``. Their package
``infinity/models/__init__.py`` (which imports the transformer and
flash_attn) is skipped by registering ``infinity.models`` as a bare package.

Two tokenizers (`CONFIGS`): ``a`` (2B-like: no patchify; d=16, ch 32,
ch_mult (1, 2), patch 2, 32x32 images, the official 1:1 '0.06M' schedule of
7 scales 1..16) and ``p`` (8B-like: apply_spatial_patchify; d=8, ch 32,
ch_mult (1, 2), patch 2, 32x32 images, transformer grids 1, 2, 4, 6, 8 and
VAE grids twice that). ``b`` reuses ``a`` on one 44x22 image with the first 7
grids of the 2.000 (h / w) schedule (non-square, non-integer resize ratios).

All arrays are in OUR layout: images NHWC, latents [B, h, w, C], token
sequences [B, L, C] with every scale flattened row-major. Keys, for X in a,
b, p (n_s = h_s w_s, L = sum_s n_s, D = d, or 4d for p's tokens):

- ``commit``, ``torch_version``, ``config`` (JSON: their vae_model kwargs,
  the shrunk fields, grids, seeds, image recipe), ``param_shapes_{a,p}``
  (JSON {their state_dict key: shape}; the weights are
  ``random_state_dict(shapes, seed=0)``), ``buffers_{a,p}`` (JSON: the
  non-parameter state_dict keys).
- ``param_shapes_{2b,8b}`` (JSON): the official-size tokenizers' parameter
  shapes (``vae_model`` as ``load_visual_tokenizer`` calls it for vae_type
  32, and 14 with apply_spatial_patchify), built on the meta device.
- ``X_img_u8`` [B, H, W, 3] uint8; their input is ``u8 / 127.5 - 1``.
- ``X_h`` [B, h, w, d]: ``encode_for_raw_features`` (encoder output, f32).
- ``X_bits`` [B, L, D] uint8: the ground-truth bit tokens of their trainer,
  ``BitwiseSelfCorrection.flip_requant`` with no noise (``gt_ms_idx_Bl``).
- ``X_x_blc`` [B, L - n_last, D]: its teacher-forcing input
  ``x_BLC_wo_prefix`` (bilinear, i.e. their 'trilinear' at t = 1).
- ``X_margin_S`` [S]: per scale, min |z| over the l2-normalized residuals the
  quantizer saw (how far every bit is from flipping).
- ``a_bits_encode`` [B, L, d]: the bits of ``vae.encode`` (MultiScaleBSQ's
  own loop: a running residual, the same bits in exact arithmetic) and
  ``a_z`` [B, h, w, d] its f_hat (its 'area' ``var_input`` is not stored:
  Infinity's trainer and sampler do not use it).
- ``{a,p}_dec_bits`` [1, L, D] uint8 random bits (seed 7) and what their
  sampler's loop (``Infinity.autoregressive_infer_cfg``, lines 583-607:
  ``lfq.indices_to_codes(bits, 'bit_label')``, 'trilinear' up to the last VAE
  grid, summed; next input 'trilinear' to the next VAE grid, pixel_unshuffle
  for p) makes of them: ``..._dec_fhat`` [B, h, w, d] (``summed_codes``),
  ``..._dec_x_blc`` [B, L - n_last, D] (the inputs of scales 1..S-1, before
  word_embed), ``..._dec_img`` [B, H, W, 3] (``vae.decode``, clamped) and
  ``..._dec_u8`` (their ``((img + 1) / 2 * 255).to(uint8)``, float32 here).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 0
IMAGE_SEED = 1234
BITS_SEED = 7

ONE_TO_ONE_006M = ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16))
TWO_TO_ONE_006M = ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11))
CONFIGS = {
  'a': dict(
    vae=dict(codebook_dim=16, patch_size=2, encoder_ch_mult=[1, 2],
             decoder_ch_mult=[1, 2]),
    shrink=dict(base_ch=32, num_res_blocks=1),
    apply_spatial_patchify=0, grids=ONE_TO_ONE_006M, batch=2, image=(32, 32),
    dec_batch=1, with_encode=True,
  ),
  'b': dict(same_vae_as='a', apply_spatial_patchify=0, grids=TWO_TO_ONE_006M,
            batch=1, image=(44, 22), with_encode=False),
  'p': dict(
    vae=dict(codebook_dim=8, patch_size=2, encoder_ch_mult=[1, 2],
             decoder_ch_mult=[1, 2]),
    shrink=dict(base_ch=32, num_res_blocks=1),
    apply_spatial_patchify=1, grids=ONE_TO_ONE_006M[:5], batch=2, image=(32, 32),
    dec_batch=1,
  ),
}  # fmt: skip


def _load_random_state():
  # By path: the package's __init__ imports jax, absent from this venv.
  path = os.path.join(REPO_ROOT, 'varrl_jax', 'convert', 'random_state.py')
  spec = importlib.util.spec_from_file_location('random_state', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def import_official(repo: str):
  """(their bsq_vae.vae module, their bitwise_self_correction module)."""
  for name, path in (('infinity', 'infinity'), ('infinity.models', 'infinity/models')):
    pkg = types.ModuleType(name)
    pkg.__path__ = [os.path.join(repo, path)]
    sys.modules[name] = pkg
  vae = importlib.import_module('infinity.models.bsq_vae.vae')
  bsc = importlib.import_module('infinity.models.bitwise_self_correction')
  return vae, bsc


def build_vae(vae_mod, cfg: dict, random_state):
  """Their vae_model with base_ch / num_res_blocks shrunk, random weights."""
  real = vae_mod.AutoEncoder

  def shrunk(args):
    for k, v in cfg['shrink'].items():
      setattr(args, k, v)
    return real(args)

  vae_mod.AutoEncoder = shrunk
  try:
    kw = dict(cfg['vae'])
    d = kw.pop('codebook_dim')
    vae = vae_mod.vae_model(None, 'dynamic', d, 2**d, test_mode=True, **kw)
  finally:
    vae_mod.AutoEncoder = real
  shapes = {k: tuple(p.shape) for k, p in vae.named_parameters()}
  values = random_state.random_state_dict(shapes, SEED)
  with torch.no_grad():
    for k, p in vae.named_parameters():
      p.copy_(torch.from_numpy(values[k]))
  params = {k: list(s) for k, s in shapes.items()}
  buffers = sorted(set(vae.state_dict()) - set(shapes))
  return vae, params, buffers


FULL_SIZES = {  # load_visual_tokenizer's vae_type 32 (2B) and 14 + patchify (8B)
  '2b': dict(codebook_dim=32, patch_size=16, ch_mult=[1, 2, 4, 4, 4]),
  '8b': dict(codebook_dim=14, patch_size=8, ch_mult=[1, 2, 4, 4]),
}


def full_size_shapes(vae_mod) -> dict:
  """{name: {key: shape}} of the official-size tokenizers (meta device: no
  memory, no weights)."""
  out = {}
  for name, c in FULL_SIZES.items():
    d, cm = c['codebook_dim'], c['ch_mult']
    with torch.device('meta'):
      vae = vae_mod.vae_model(
        None, 'dynamic', d, 2**d, test_mode=True, patch_size=c['patch_size'],
        encoder_ch_mult=cm, decoder_ch_mult=cm,
      )  # fmt: skip
    out[name] = {k: list(p.shape) for k, p in vae.named_parameters()}
  return out


def test_images(batch: int, size: tuple[int, int], seed: int) -> np.ndarray:
  """[B, H, W, 3] uint8: sums of low-frequency sinusoids + noise, tanh."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(*(np.linspace(0, 1, n) for n in size), indexing='ij')
  img = np.zeros((batch, *size, 3))
  for b in range(batch):
    for c in range(3):
      for _ in range(4):
        fy, fx = rng.uniform(0.5, 3.0, size=2)
        phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.6)
        img[b, ..., c] += amp * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
  img = np.tanh(img + 0.05 * rng.standard_normal(img.shape))
  return np.round((img + 1) * 127.5).astype(np.uint8)


def _nhwc(x: torch.Tensor) -> np.ndarray:
  if x.ndim == 5:  # [B, C, 1, h, w]
    x = x.squeeze(2)
  return x.permute(0, 2, 3, 1).float().numpy()


def _tokens(bits_list, patchify: bool) -> np.ndarray:
  """Their per-scale bit tensors -> [B, L, D] uint8."""
  out = []
  for b in bits_list:
    b = b.reshape(b.shape[0], -1, b.shape[-1]) if not patchify else b
    out.append(b.numpy().astype(np.uint8))
  return np.concatenate(out, axis=1)


def encode_outputs(vae, bsc_mod, img_u8, cfg) -> dict:
  """Their encoder, the trainer's bit tokens / inputs and vae.encode."""
  patchify = bool(cfg['apply_spatial_patchify'])
  vae_sched = [(1, 2 * h, 2 * w) if patchify else (1, h, w) for h, w in cfg['grids']]
  inp = torch.from_numpy(img_u8).permute(0, 3, 1, 2).float() / 127.5 - 1
  raw, _, _ = vae.encode_for_raw_features(inp, scale_schedule=vae_sched)
  seen = []  # the residual every lfq call quantizes, for the sign margin
  lfq_forward = vae.quantizer.lfq.forward

  def record(x, *a, **k):
    seen.append(x.detach().clone())
    return lfq_forward(x, *a, **k)

  vae.quantizer.lfq.forward = record
  args = types.SimpleNamespace(
    noise_apply_layers=0, noise_apply_requant=0, noise_apply_strength=0.0,
    apply_spatial_patchify=int(patchify), debug_bsc=0,
  )  # fmt: skip
  bsc = bsc_mod.BitwiseSelfCorrection(vae, args)
  x_blc, gt = bsc.flip_requant(vae_sched, inp, raw, 'cpu')
  del vae.quantizer.lfq.forward
  margins = [F.normalize(x, dim=1).abs().min().item() for x in seen]
  out = dict(
    img_u8=img_u8,
    h=_nhwc(raw),
    bits=np.concatenate([g.numpy().astype(np.uint8) for g in gt], axis=1),
    x_blc=x_blc.float().numpy(),
    margin_S=np.array(margins, np.float32),
  )
  if cfg.get('with_encode'):
    _, z, _, bits, _, _ = vae.encode(inp, scale_schedule=vae_sched)
    out['bits_encode'] = _tokens([b.squeeze(1) for b in bits], False)
    out['z'] = _nhwc(z)
  return out


def decode_outputs(vae, cfg) -> dict:
  """Random bit tokens through their sampler's code path, then decode."""
  patchify = bool(cfg['apply_spatial_patchify'])
  grids, batch = cfg['grids'], cfg['dec_batch']
  d = cfg['vae']['codebook_dim']
  depth = 4 * d if patchify else d
  k = 2 if patchify else 1
  vae_sched = [(1, k * h, k * w) for h, w in grids]
  rng = np.random.default_rng(BITS_SEED)
  n = [h * w for h, w in grids]
  bits = rng.integers(0, 2, size=(batch, sum(n), depth)).astype(np.uint8)
  up = vae.quantizer.z_interplote_up
  summed, inputs, start = 0, [], 0
  for si, (h, w) in enumerate(grids):
    idx = torch.from_numpy(bits[:, start : start + n[si]].astype(np.int64))
    start += n[si]
    idx = idx.reshape(batch, h, w, depth)
    if patchify:
      idx = F.pixel_shuffle(idx.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    codes = vae.quantizer.lfq.indices_to_codes(idx.unsqueeze(1), label_type='bit_label')
    if si != len(grids) - 1:
      summed = summed + F.interpolate(codes, size=vae_sched[-1], mode=up)
      nxt = F.interpolate(summed, size=vae_sched[si + 1], mode=up).squeeze(-3)
      if patchify:
        nxt = F.pixel_unshuffle(nxt, 2)
      inputs.append(nxt.reshape(*nxt.shape[:2], -1).permute(0, 2, 1).numpy())
    else:
      summed = summed + codes
  img = vae.decode(summed.squeeze(-3))
  u8 = ((img + 1) / 2).mul(255).to(torch.uint8)
  return dict(
    dec_bits=bits,
    dec_fhat=_nhwc(summed),
    dec_x_blc=np.concatenate(inputs, axis=1),
    dec_img=_nhwc(img),
    dec_u8=_nhwc(u8).astype(np.uint8),
  )


def _commit(repo: str) -> str:
  return subprocess.check_output(['git', '-C', repo, 'rev-parse', 'HEAD'], text=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--infinity_repo', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  torch.manual_seed(0)
  torch.set_grad_enabled(False)
  vae_mod, bsc_mod = import_official(os.path.abspath(args.infinity_repo))
  random_state = _load_random_state()
  arrays, config, vaes = {}, {}, {}
  for name, cfg in CONFIGS.items():
    base = CONFIGS[cfg.get('same_vae_as', name)]
    full = dict(base, **cfg)
    if name in ('a', 'p'):
      vae, params, buffers = build_vae(vae_mod, full, random_state)
      vaes[name] = vae
      arrays[f'param_shapes_{name}'] = json.dumps(params)
      arrays[f'buffers_{name}'] = json.dumps(buffers)
    vae = vaes[cfg.get('same_vae_as', name)]
    img = test_images(full['batch'], full['image'], IMAGE_SEED + ord(name))
    outs = encode_outputs(vae, bsc_mod, img, full)
    if name != 'b':
      outs.update(decode_outputs(vae, full))
    arrays.update({f'{name}_{k}': v for k, v in outs.items()})
    config[name] = {k: v for k, v in full.items() if k != 'same_vae_as'}
    config[name]['vae_from'] = cfg.get('same_vae_as', name)
  config.update(
    seed=SEED, bits_seed=BITS_SEED, image_seed=f'{IMAGE_SEED} + ord(name)',
    vae_model_call="vae_model(None, 'dynamic', d, 2**d, test_mode=True, **vae)",
  )  # fmt: skip
  for name, shapes in full_size_shapes(vae_mod).items():
    arrays[f'param_shapes_{name}'] = json.dumps(shapes)
  arrays.update(
    commit=_commit(args.infinity_repo).strip(),
    torch_version=torch.__version__,
    config=json.dumps(config),
  )
  for k, v in arrays.items():
    if isinstance(v, np.ndarray) and v.dtype == np.float64:
      arrays[k] = v.astype(np.float32)
  np.savez_compressed(args.out, **arrays)
  size = os.path.getsize(args.out)
  print(f'wrote {args.out} ({size / 1024:.0f} KB, {len(arrays)} arrays)')
  for k in ('a', 'b', 'p'):
    print(k, 'min sign margin', arrays[f'{k}_margin_S'].min())
  same = np.array_equal(arrays['a_bits'], arrays['a_bits_encode'])
  print('a: trainer bits == vae.encode bits:', same)


if __name__ == '__main__':
  main()
