"""Reference arrays from the official FoundationVision/VAR code, for parity tests.

Runs THEIR model code (from a checkout given by ``--var_repo``; nothing of it is
copied here) with seeded random weights from
`varrl_jax.convert.random_state.random_state_dict` (seed 0) and writes one
compressed ``.npz`` of inputs and outputs. It needs a Python with torch, numpy,
huggingface_hub and pillow (what their ``models/`` imports), not our JAX venv;
no network at run time::

  python3 -m venv /tmp/var_env
  /tmp/var_env/bin/pip install torch==2.13.0 numpy huggingface_hub pillow
  git clone https://github.com/FoundationVision/VAR /tmp/VAR
  /tmp/var_env/bin/python tools/var_reference.py --var_repo=/tmp/VAR \\
    --out=tests/models/data/var_reference.npz
  # the official d16 sizes (about 1 min on 2 CPU cores; not for committing):
  /tmp/var_env/bin/python tools/var_reference.py --var_repo=/tmp/VAR \\
    --out=/tmp/var_reference_d16.npz --full
  # also the randomly initialised state dicts, as their code saves them:
  ... --save_checkpoints=/tmp/var_ckpts

Default (reduced): VQVAE(vocab_size=256, z_channels=32, ch=32,
share_quant_resi=4, v_patch_nums=(1, 2, 3, 4, 5, 6, 8)) on 2 images of
128x128, and two VAR(depth=2, embed_dim=128, num_heads=2, attn_l2_norm=True)
sharing that VQVAE: ``var_`` (shared_aln=False) and ``varshared_``
(shared_aln=True, as d36). ``--full``: the ``build_vae_var`` defaults (V=4096,
Cvae=32, ch=160, patch_nums 1..16, depth 16, 256x256) on 1 image. Both use
cond_drop_rate=0, eval mode, float32, no flash/fused/xformers kernels and
torch's math attention kernel.

Keys (B images, L = sum(pn^2), V codes, Cvae channels, SN scales):

- ``commit``, ``torch_version``, ``config`` (JSON: the exact constructor kwargs,
  image recipe, labels, sampling settings), ``patch_nums`` [SN];
  ``param_shapes_{vae,var,varshared}`` and ``buffer_shapes_...`` (JSON
  ``{name: [shape, dtype]}``; buffers keep their constructor values).
- ``img`` [B, 3, H, W] float32 in [-1, 1], NCHW (as they take it).
- ``label_B`` [B] int64: the teacher-forcing labels (1000 = the null class).
- ``vae_f`` [B, Cvae, h, w]: ``quant_conv(encoder(img))``.
- ``vae_idx_BL`` [B, L] int64: ``img_to_idxBl`` concatenated over scales,
  each scale flattened row-major (index ``r * pn + c``).
- ``vae_idx_gap_S`` [SN] float32: per scale, the smallest (2nd - 1st) squared
  distance to the codebook over tokens (how robust the argmin is).
- ``vae_fhat_S`` [SN, B, Cvae, h, w]: the quantizer's accumulated f_hat after
  each scale; ``vae_fhat`` is the last one.
- ``vae_rec`` [B, 3, H, W]: ``fhat_to_img(vae_fhat)``, clamped to [-1, 1].
- ``vae_var_input`` [B, L - 1, Cvae]: ``idxBl_to_var_input``, the VAR
  teacher-forcing input ``x_BLCv_wo_first_l``.
- ``{var,varshared}_logits_BLV`` [B, L, V] float32: ``var(label_B, input)``.
- ``ar_label_B`` [B'] int64; ``{var,varshared}_ar_idx_BL`` [B', L] int64, the
  ids sampled per scale by ``autoregressive_infer_cfg(cfg=4, top_k=1,
  top_p=0)`` (argmax, so RNG-free); ``..._ar_img`` [B', 3, H, W] what it
  returns (in [0, 1]); ``..._ar_gap_S`` [SN] the smallest top-1 minus top-2
  guided logit per scale.
- ``phi_index_SN{2..20}`` [SN] int64: the phi their ``PhiPartiallyShared``
  (K=4) picks for ``si / (SN - 1)``; ``phi_ties`` (JSON) the (SN, si) that are
  exact ties in real arithmetic and what float64 picked.
"""

from __future__ import annotations

import argparse
import contextlib
import fractions
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 0
IMAGE_SEED = 1234


def _load_random_state():
  # By path: the package's __init__ may import jax, absent from this venv.
  path = os.path.join(REPO_ROOT, 'varrl_jax', 'convert', 'random_state.py')
  spec = importlib.util.spec_from_file_location('random_state', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_configs(full: bool) -> dict:
  """Constructor kwargs of their VQVAE and VAR, and the inputs' settings."""
  if full:  # build_vae_var's defaults, as in models/__init__.py
    depth, patch_nums = 16, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    vae = dict(vocab_size=4096, z_channels=32, ch=160)
    width, heads, dpr = depth * 64, depth, 0.1 * depth / 24
    batch, image_size = 1, 256
    labels, ar_labels = [207], [207]
  else:
    depth, patch_nums = 2, (1, 2, 3, 4, 5, 6, 8)
    vae = dict(vocab_size=256, z_channels=32, ch=32)
    width, heads, dpr = 128, 2, 0.0
    batch, image_size = 2, 128
    labels, ar_labels = [207, 1000], [207, 3]
  vae.update(share_quant_resi=4, v_patch_nums=patch_nums, test_mode=True)
  var = dict(
    num_classes=1000,
    depth=depth,
    embed_dim=width,
    num_heads=heads,
    mlp_ratio=4.0,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=dpr,  # inert in eval mode
    norm_eps=1e-6,
    shared_aln=False,
    cond_drop_rate=0.0,  # their forward drops labels at random otherwise
    attn_l2_norm=True,
    patch_nums=patch_nums,
    flash_if_available=False,
    fused_if_available=False,
  )
  return dict(
    vae=vae,
    var=var,
    varshared=dict(var, shared_aln=True),
    seed=SEED,
    image_size=image_size,
    batch=batch,
    label_B=labels,
    ar=dict(label_B=ar_labels, cfg=4.0, top_k=1, top_p=0.0, g_seed=None),
    image_recipe=(
      f'test_images(B={batch}, size={image_size}, seed={IMAGE_SEED}) in '
      'tools/var_reference.py: sums of 4 low-frequency sinusoids per channel '
      '+ 0.05 N, tanh, rounded to uint8 levels k/127.5 - 1'
    ),
    attention_kernel='torch SDPBackend.MATH',
  )


def test_images(batch: int, size: int, seed: int = IMAGE_SEED) -> np.ndarray:
  """[B, 3, H, W] smooth float32 images in [-1, 1] on the uint8 grid."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing='ij')
  img = np.zeros((batch, 3, size, size))
  for b in range(batch):
    for c in range(3):
      for _ in range(4):
        fy, fx = rng.uniform(0.5, 3.0, size=2)
        phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.6)
        img[b, c] += amp * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
  img = np.tanh(img + 0.05 * rng.standard_normal(img.shape))
  return (np.round((img + 1) * 127.5) / 127.5 - 1).astype(np.float32)


def randomize(model: torch.nn.Module, random_state) -> tuple[dict, dict]:
  """Fills every parameter from random_state_dict; returns the shape tables."""
  shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
  values = random_state.random_state_dict(shapes, SEED)
  with torch.no_grad():
    for k, p in model.named_parameters():
      p.copy_(torch.from_numpy(values[k]))
  params = {k: [list(p.shape), str(p.dtype)] for k, p in model.named_parameters()}
  buffers = {k: [list(b.shape), str(b.dtype)] for k, b in model.named_buffers()}
  return params, buffers


def vae_outputs(vae, img: torch.Tensor, patch_nums) -> dict:
  """Encoder features, multi-scale ids, f_hat, reconstruction, VAR input."""
  quant = vae.quantize
  f = vae.quant_conv(vae.encoder(img))
  idx_list = vae.img_to_idxBl(img)
  fhat_list = quant.f_to_idxBl_or_fhat(f, to_fhat=True)
  # Same f_hat again from the ids, via the decoder-side path.
  B, C = f.shape[:2]
  h_list = [
    quant.embedding(idx).transpose(1, 2).reshape(B, C, pn, pn)
    for idx, pn in zip(idx_list, patch_nums)
  ]
  fhat_from_ids = quant.embed_to_fhat(h_list, all_to_max_scale=True, last_one=True)
  torch.testing.assert_close(fhat_from_ids, fhat_list[-1], rtol=1e-5, atol=1e-5)
  return dict(
    vae_f=f,
    vae_idx_BL=torch.cat(idx_list, dim=1),
    vae_idx_gap_S=torch.tensor(_idx_gaps(quant, f, idx_list, patch_nums)),
    vae_fhat_S=torch.stack(fhat_list),
    vae_fhat=fhat_list[-1],
    vae_rec=vae.fhat_to_img(fhat_list[-1].clone()),
    vae_var_input=quant.idxBl_to_var_input(idx_list),
  )


def _idx_gaps(quant, f, idx_list, patch_nums) -> list[float]:
  # Replays their residual loop (quant.py f_to_idxBl_or_fhat) to measure, per
  # scale, how far the chosen code is ahead of the runner-up.
  F = torch.nn.functional
  B, C, H, W = f.shape
  SN = len(patch_nums)
  f_rest, emb, gaps = f.clone(), quant.embedding.weight, []
  for si, pn in enumerate(patch_nums):
    z = f_rest if si == SN - 1 else F.interpolate(f_rest, size=(pn, pn), mode='area')
    z_NC = z.permute(0, 2, 3, 1).reshape(-1, C)
    d = z_NC.square().sum(1, keepdim=True) + emb.square().sum(1) - 2 * z_NC @ emb.T
    two = d.topk(2, dim=1, largest=False)
    assert torch.equal(two.indices[:, 0], idx_list[si].reshape(-1)), si
    gaps.append(float((two.values[:, 1] - two.values[:, 0]).min()))
    h = quant.embedding(idx_list[si]).transpose(1, 2).reshape(B, C, pn, pn)
    if si != SN - 1:
      h = F.interpolate(h, size=(H, W), mode='bicubic')
    f_rest = f_rest - quant.quant_resi[si / (SN - 1)](h)
  return gaps


@contextlib.contextmanager
def record_sampling(var_module):
  """Wraps the sampler name models/var.py imported, recording ids and gaps."""
  original = var_module.sample_with_top_k_top_p_
  ids, gaps = [], []

  def wrapped(logits_BlV, *args, **kwargs):
    top2 = logits_BlV.topk(2, dim=-1).values
    gaps.append(float((top2[..., 0] - top2[..., 1]).min()))
    idx_Bl1 = original(logits_BlV, *args, **kwargs)
    ids.append(idx_Bl1[:, :, 0].clone())
    return idx_Bl1

  var_module.sample_with_top_k_top_p_ = wrapped
  try:
    yield ids, gaps
  finally:
    var_module.sample_with_top_k_top_p_ = original


def var_outputs(name, var, var_module, label_B, x_in, ar_cfg) -> dict:
  """Teacher-forced logits and a deterministic (top_k=1) CFG sample."""
  logits = var(label_B, x_in)
  ar_label = torch.tensor(ar_cfg['label_B'])
  with record_sampling(var_module) as (ids, gaps):
    img = var.autoregressive_infer_cfg(
      B=len(ar_label),
      label_B=ar_label,
      g_seed=ar_cfg['g_seed'],
      cfg=ar_cfg['cfg'],
      top_k=ar_cfg['top_k'],
      top_p=ar_cfg['top_p'],
    )
  ar_idx = torch.cat(ids, dim=1)
  _check_kv_cache_matches_teacher_forcing(var, ar_label, ar_idx, ar_cfg['cfg'])
  return {
    f'{name}_logits_BLV': logits,
    f'{name}_ar_idx_BL': ar_idx,
    f'{name}_ar_img': img,
    f'{name}_ar_gap_S': torch.tensor(gaps),
  }


def _check_kv_cache_matches_teacher_forcing(var, label_B, ar_idx, cfg):
  # Their sampler (KV cache, no mask) and forward (block-causal mask) must
  # agree: teacher-forcing the sampled ids with CFG reproduces each argmax.
  quant, B = var.vae_quant_proxy[0], len(label_B)
  splits = [pn * pn for pn in var.patch_nums]
  x_in = quant.idxBl_to_var_input(list(ar_idx.split(splits, dim=1)))
  null = torch.full_like(label_B, var.num_classes)
  logits = var(torch.cat([label_B, null]), x_in.repeat(2, 1, 1))
  ratio = torch.cat(
    [torch.full((n,), si / (len(splits) - 1)) for si, n in enumerate(splits)]
  )[None, :, None]
  t = cfg * ratio
  guided = (1 + t) * logits[:B] - t * logits[B:]
  agree = (guided.argmax(-1) == ar_idx).float().mean().item()
  print(f'  teacher-forced argmax == KV-cache sample: {agree:.4f}')
  assert agree == 1.0


def phi_indices(quant_module) -> tuple[dict, list]:
  """Which of K=4 phis their PhiPartiallyShared picks for si/(SN-1)."""
  mods = [torch.nn.Identity() for _ in range(4)]
  phi = quant_module.PhiPartiallyShared(torch.nn.ModuleList(mods))
  ticks = [fractions.Fraction(1, 12) + i * fractions.Fraction(5, 18) for i in range(4)]
  assert np.allclose(np.array([float(t) for t in ticks]), phi.ticks)
  out, ties = {}, []
  for SN in range(2, 21):
    picked = []
    for si in range(SN):
      k = [i for i, m in enumerate(mods) if phi[si / (SN - 1)] is m][0]
      picked.append(k)
      at = fractions.Fraction(si, SN - 1)
      dist = [abs(t - at) for t in ticks]
      nearest = [i for i, d in enumerate(dist) if d == min(dist)]
      if len(nearest) > 1:
        ties.append(dict(SN=SN, si=si, at=str(at), candidates=nearest, picked=k))
    out[f'phi_index_SN{SN}'] = np.array(picked, dtype=np.int64)
  return out, ties


def _git_commit(path: str) -> str:
  return subprocess.check_output(
    ['git', '-C', path, 'rev-parse', 'HEAD'], text=True
  ).strip()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--var_repo', required=True, help='official VAR checkout')
  parser.add_argument('--out', required=True, help='.npz to write')
  parser.add_argument('--full', action='store_true', help='official d16 sizes')
  parser.add_argument('--save_checkpoints', default='', help='dir for .pth files')
  args = parser.parse_args(argv)

  # --- their code
  var_repo = os.path.abspath(args.var_repo)
  sys.path.insert(0, var_repo)  # their modules import `dist` and `models.*`
  import models.quant as quant_module
  import models.var as var_module
  from models.var import VAR
  from models.vqvae import VQVAE

  random_state = _load_random_state()
  commit = _git_commit(var_repo)
  cfg = get_configs(args.full)
  torch.manual_seed(SEED)
  torch.set_grad_enabled(False)

  # --- models, seeded random weights
  vae = VQVAE(**cfg['vae']).float().eval()
  variants = {}
  shapes = {}
  shapes['vae'] = randomize(vae, random_state)
  for name in ('var', 'varshared'):
    model = VAR(vae_local=vae, **cfg[name]).float().eval()
    shapes[name] = randomize(model, random_state)
    variants[name] = model

  # --- inputs
  B, size = cfg['batch'], cfg['image_size']
  img = torch.from_numpy(test_images(B, size))
  label_B = torch.tensor(cfg['label_B'])
  patch_nums = cfg['vae']['v_patch_nums']

  # --- outputs
  from torch.nn.attention import SDPBackend, sdpa_kernel

  arrays = dict(img=img, label_B=label_B, ar_label_B=torch.tensor(cfg['ar']['label_B']))
  with sdpa_kernel(SDPBackend.MATH):
    print('VQ-VAE')
    arrays.update(vae_outputs(vae, img, patch_nums))
    for name, model in variants.items():
      print(name)
      arrays.update(
        var_outputs(
          name, model, var_module, label_B, arrays['vae_var_input'], cfg['ar']
        )
      )
  phi, ties = phi_indices(quant_module)

  # --- write
  out = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
  for k, v in out.items():
    if v.dtype == np.float64 or v.dtype == np.float32:
      out[k] = v.astype(np.float32)
  out.update(phi)
  out['patch_nums'] = np.array(patch_nums, dtype=np.int64)
  out['commit'] = np.array(commit)
  out['torch_version'] = np.array(torch.__version__)
  out['config'] = np.array(json.dumps(cfg))
  out['phi_ties'] = np.array(json.dumps(ties))
  for name, (params, buffers) in shapes.items():
    out[f'param_shapes_{name}'] = np.array(json.dumps(params))
    out[f'buffer_shapes_{name}'] = np.array(json.dumps(buffers))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out, **out)
  print(f'wrote {args.out} ({os.path.getsize(args.out) / 2**20:.2f} MiB)')
  for k in sorted(out):
    v = out[k]
    print(f'  {k:28s} {v.dtype!s:8s} {tuple(v.shape)}')

  # --- checkpoints in their own format (buffers included)
  if args.save_checkpoints:
    os.makedirs(args.save_checkpoints, exist_ok=True)
    v = cfg['vae']
    files = {
      f'vae_ch{v["ch"]}v{v["vocab_size"]}z{v["z_channels"]}.pth': vae,
      f'var_d{cfg["var"]["depth"]}.pth': variants['var'],
      f'var_d{cfg["var"]["depth"]}_shared_aln.pth': variants['varshared'],
    }
    for fname, model in files.items():
      path = os.path.join(args.save_checkpoints, fname)
      torch.save(model.state_dict(), path)
      print(f'saved {path} ({os.path.getsize(path) / 2**20:.1f} MiB)')
  print(f'commit {commit}, torch {torch.__version__}, phi ties {ties}')
  assert math.isfinite(float(out['var_logits_BLV'].sum()))


if __name__ == '__main__':
  main()
