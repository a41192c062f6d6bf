"""Reference arrays from the official FoundationVision/Infinity transformer.

Runs THEIR ``infinity/models`` code (a checkout given by ``--infinity_repo``;
nothing of it is copied here) at a reduced size with seeded random weights
from `varrl_jax.convert.random_state.random_state_dict` (seed 0), on CPU in
float32, and writes one compressed ``.npz`` for
``tests/models/test_infinity_transformer.py``. It needs a Python with torch,
timm, numpy, easydict and pytz (their imports), not our JAX venv; no network::

  git clone https://github.com/FoundationVision/Infinity /tmp/Infinity
  # float32 reference: their CrossAttention rounds q, k, v to bfloat16 when
  # the model is float32 (infinity/models/basic.py, CrossAttention.forward);
  # turn that branch off (the script refuses to run without this patch):
  sed -i 's/if q_compact.dtype == torch.float32:/if False:/' \\
    /tmp/Infinity/infinity/models/basic.py
  /tmp/var_env/bin/python tools/infinity_transformer_reference.py \\
    --infinity_repo=/tmp/Infinity \\
    --out=tests/models/data/infinity_transformer_reference.npz

Their ``basic.py`` imports ``flash_attn`` unconditionally; when it is not
installed this script registers a stand-in module (`_flash_attn_stand_in`:
``flash_attn_func`` and ``flash_attn_varlen_kvpacked_func`` over torch's
``scaled_dot_product_attention``, the varlen one a loop over the
``cu_seqlens`` segments) before importing their code. ``flash_attn.ops`` stays
absent, so their pure-torch RMSNorm fallback runs.

Model (as ``tools/run_infinity.py`` builds infinity_2b, reduced): ``Infinity(
vae_local=<stub with embed_dim=d>, text_channels=256, text_maxlen=8,
embed_dim=64, depth=4, num_heads=4, mlp_ratio=4, shared_aln=True,
cond_drop_rate=0, block_chunks=2, fused_norm=False, use_bit_label=1,
rope2d_each_sa_layer=1, rope2d_normalized_by_hw=2,
add_lvl_embeding_only_first_block=1, apply_spatial_patchify=0,
inference_mode=True)``, d = 8 bits, eval mode. text_channels is 256 because
their attentive text pool has ``text_channels // 128`` heads (2 here). Their
inference runs with ``fused_norm=True`` and only that branch of
``CrossAttnBlock.forward`` passes ``scale_ind`` to the self-attention (the
RoPE offset of a KV-cached scale); the script sets each block's
``fused_norm_func`` to the eager function behind their compiled
``fused_ada_layer_norm`` (``_torchdynamo_orig_callable``) so that branch runs
without torch.compile.

Schedule: their '0.06M' schedule for h/w = 1.25 (7 scales, (1,1), (2,2), (3,3),
(5,4), (10,8), (15,12), (20,16); 614 tokens), non-square so the 2-D RoPE's
height and width halves differ. Text: B = 2 prompts of random Flan-T5-like
embeddings (N(0, 1) * 0.3, seed 7) with lengths 5 and 8.

Recorded (B = 2, L = 614, d = 8):

- ``commit``, ``torch_version``, ``config`` (JSON: constructor kwargs, schedule,
  sampler settings), ``param_shapes`` / ``buffer_shapes`` (JSON ``{their
  state_dict key: shape}``; weights = ``random_state_dict(param_shapes, 0)``).
- ``text`` [B, 8, 256] float32 (zero past each length), ``text_lens`` [B].
- sampling, ``autoregressive_infer_cfg(cfg_list=[4]*7, tau_list=[0.5]*7,
  top_k=900, top_p=0.97, cfg_insertion_layer=[0], g_seed=0, vae_type=8,
  inference_mode=True)`` (their defaults in run_infinity.py / infer.sh; CFG
  on logits) with a stub VAE whose ``indices_to_codes`` is ``2 bit - 1``
  (the transformer does not care what produces its next-scale inputs):
  ``ar_inputs`` [B, L - 1, d] what their sampler fed ``word_embed`` for scales
  1.. (recorded by a forward hook); ``ar_bits`` [B, L, d] int8 the bits it
  drew; ``ar_guided`` [B, L, d, 2] the logits handed to their
  ``sample_with_top_k_top_p_also_inplace_modifying_logits_`` (``(cfg l_c +
  (1 - cfg) l_u) / tau``, before top-k / top-p); ``ar_removed`` [B, L, d, 2]
  bool, where that function set them to -inf.
- ``tf_logits`` [B, L, 2 d]: their teacher-forced ``forward`` (the training
  path, block-causal mask) on the conditional text with ``ar_inputs``.

The script asserts that their two paths agree: ``(cfg tf_c + (1 - cfg) tf_u) /
tau`` from the teacher-forced forward on the text and on ``cfg_uncond[:len]``
equals ``ar_guided`` (max |diff| 1.2e-5 at commit 4c27bbb).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 0
TEXT_SEED = 7
BITS = 8
TEXT_LENS = (5, 8)
H_DIV_W, PN = 1.25, '0.06M'
SAMPLER = dict(cfg=4.0, tau=0.5, top_k=900, top_p=0.97, g_seed=0)
MODEL_KW = dict(
  text_channels=256,
  text_maxlen=8,
  embed_dim=64,
  depth=4,
  num_heads=4,
  mlp_ratio=4.0,
  shared_aln=True,
  cond_drop_rate=0.0,
  block_chunks=2,
  fused_norm=False,
  use_bit_label=1,
  rope2d_each_sa_layer=1,
  rope2d_normalized_by_hw=2,
  add_lvl_embeding_only_first_block=1,
  apply_spatial_patchify=0,
  inference_mode=True,
  pn=PN,
  train_h_div_w_list=[1.0],
)


def _flash_attn_stand_in() -> types.ModuleType:
  """A ``flash_attn`` module over torch SDPA (see the module docstring)."""
  sdpa = torch.nn.functional.scaled_dot_product_attention
  mod = types.ModuleType('flash_attn')

  def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    out = sdpa(
      *(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal, scale=softmax_scale
    )
    return out.transpose(1, 2)

  def flash_attn_varlen_kvpacked_func(
    q,
    kv,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
  ):
    cq, ck, outs = cu_seqlens_q.tolist(), cu_seqlens_k.tolist(), []
    for i in range(len(cq) - 1):
      qi = q[cq[i] : cq[i + 1]].transpose(0, 1)
      ki, vi = kv[ck[i] : ck[i + 1]].permute(1, 2, 0, 3)
      outs.append(sdpa(qi, ki, vi, scale=softmax_scale).transpose(0, 1))
    return torch.cat(outs, dim=0)

  mod.flash_attn_func = flash_attn_func
  mod.flash_attn_varlen_kvpacked_func = flash_attn_varlen_kvpacked_func
  return mod


def _load_random_state():
  # By path: the package's __init__ imports jax, absent from this venv.
  path = os.path.join(REPO_ROOT, 'varrl_jax', 'convert', 'random_state.py')
  spec = importlib.util.spec_from_file_location('random_state', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _import_theirs(repo: str):
  try:
    import flash_attn  # noqa: F401
  except ImportError:
    sys.modules['flash_attn'] = _flash_attn_stand_in()
  sys.path.insert(0, repo)
  from infinity.models import basic, fused_op, infinity
  from infinity.utils.dynamic_resolution import dynamic_resolution_h_w

  if 'q_compact.dtype == torch.float32' in inspect.getsource(
    basic.CrossAttention.forward
  ):
    sys.exit(
      'error: --infinity_repo: CrossAttention.forward still casts to '
      "bfloat16; apply the sed patch in this script's docstring"
    )
  return basic, fused_op, infinity, dynamic_resolution_h_w


class _StubLfq:
  """Bits -> codes 2 b - 1, [B, 1, h, w, d] -> [B, d, 1, h, w]; records bits."""

  def __init__(self):
    self.bits = []

  def indices_to_codes(self, idx_Bld, label_type):
    assert label_type == 'bit_label'
    self.bits.append(idx_Bld[:, 0].reshape(idx_Bld.shape[0], -1, BITS).clone())
    return (2.0 * idx_Bld.float() - 1.0).permute(0, 4, 1, 2, 3)


def build(infinity, fused_op, random_state):
  lfq = _StubLfq()
  quantizer = types.SimpleNamespace(
    lfq=types.SimpleNamespace(mask=None), z_interplote_up='trilinear'
  )
  quantizer.lfq = types.SimpleNamespace(
    mask=None, indices_to_codes=lfq.indices_to_codes
  )
  vae = types.SimpleNamespace(embed_dim=BITS, vocab_size=2**BITS, quantizer=quantizer)
  torch.manual_seed(SEED)
  model = infinity.Infinity(vae_local=vae, **MODEL_KW).eval()
  eager = fused_op.fused_ada_layer_norm._torchdynamo_orig_callable
  for blk in model.unregistered_blocks:
    blk.fused_norm_func = eager
  shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
  values = random_state.random_state_dict(shapes, SEED)
  with torch.no_grad():
    for k, p in model.named_parameters():
      p.copy_(torch.from_numpy(values[k]))
  return model, vae, lfq


def text_inputs():
  rng = np.random.default_rng(TEXT_SEED)
  ct, tmax = MODEL_KW['text_channels'], MODEL_KW['text_maxlen']
  text = np.zeros((len(TEXT_LENS), tmax, ct), np.float32)
  for i, n in enumerate(TEXT_LENS):
    text[i, :n] = 0.3 * rng.standard_normal((n, ct))
  return text


def compact(text: np.ndarray):
  """Their text tuple (kv_compact, lens, cu_seqlens_k, max_seqlen_k)."""
  lens = list(TEXT_LENS)
  kv = torch.cat([torch.from_numpy(t[:n]) for t, n in zip(text, lens)])
  cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)
  return kv, lens, cu, max(lens)


def sample(model, infinity, vae, lfq, text, schedule):
  inputs, guided, removed = [], [], []
  hook = model.word_embed.register_forward_hook(
    lambda m, args, out: inputs.append(args[0].detach().clone())
  )
  original = infinity.sample_with_top_k_top_p_also_inplace_modifying_logits_

  def wrapped(logits, *args, **kwargs):
    guided.append(logits.clone())
    out = original(logits, *args, **kwargs)
    removed.append(torch.isneginf(logits))
    return out

  infinity.sample_with_top_k_top_p_also_inplace_modifying_logits_ = wrapped
  n = len(schedule)
  try:
    with torch.no_grad():
      model.autoregressive_infer_cfg(
        vae=vae,
        scale_schedule=schedule,
        label_B_or_BLT=compact(text),
        B=len(TEXT_LENS),
        g_seed=SAMPLER['g_seed'],
        cfg_list=[SAMPLER['cfg']] * n,
        tau_list=[SAMPLER['tau']] * n,
        top_k=SAMPLER['top_k'],
        top_p=SAMPLER['top_p'],
        returns_vemb=1,
        cfg_insertion_layer=[0],
        vae_type=BITS,
        ret_img=False,
        inference_mode=True,
      )
  finally:
    hook.remove()
    infinity.sample_with_top_k_top_p_also_inplace_modifying_logits_ = original
  b = len(TEXT_LENS)
  per_token = lambda ts: torch.cat([t.reshape(b, -1, BITS, 2) for t in ts], 1)  # noqa: E731
  return dict(
    ar_inputs=torch.cat(inputs, 1),
    ar_bits=torch.cat(lfq.bits, 1).to(torch.int8),
    ar_guided=per_token(guided),
    ar_removed=per_token(removed),
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--infinity_repo', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  torch.backends.mha.set_fastpath_enabled(False)
  basic, fused_op, infinity, dyn = _import_theirs(args.infinity_repo)
  model, vae, lfq = build(infinity, fused_op, _load_random_state())
  schedule = [(1, h, w) for _, h, w in dyn[H_DIV_W][PN]['scales']]
  text = text_inputs()
  out = sample(model, infinity, vae, lfq, text, schedule)
  with torch.no_grad():
    tf = model(compact(text), out['ar_inputs'], scale_schedule=schedule)
  out['tf_logits'] = tf
  # Their own two paths must agree: the sampler's conditional logits (KV
  # cache, per-scale RoPE offsets) are the teacher-forced ones.
  cfg, tau = SAMPLER['cfg'], SAMPLER['tau']
  null = np.zeros_like(text)
  for i, n in enumerate(TEXT_LENS):
    null[i, :n] = model.cfg_uncond.detach().numpy()[:n]
  with torch.no_grad():
    tf_null = model(compact(null), out['ar_inputs'], scale_schedule=schedule)
  guided = ((cfg * tf + (1 - cfg) * tf_null) / tau).reshape(out['ar_guided'].shape)
  gap = float((guided - out['ar_guided']).abs().max())
  print(f'their sampler vs their teacher-forced guided logits: max |diff| {gap:.2e}')
  assert gap < 1e-4, gap
  out = {k: v.numpy() for k, v in out.items()}
  out['text'] = text
  out['text_lens'] = np.array(TEXT_LENS, np.int32)
  commit = subprocess.check_output(
    ['git', '-C', args.infinity_repo, 'rev-parse', 'HEAD'], text=True
  ).strip()
  out['commit'] = np.array(commit)
  out['torch_version'] = np.array(torch.__version__)
  config = dict(
    model=MODEL_KW,
    bits=BITS,
    h_div_w=H_DIV_W,
    pn=PN,
    schedule=[list(s) for s in schedule],
    sampler=SAMPLER,
    text_lens=TEXT_LENS,
    text_seed=TEXT_SEED,
    weight_seed=SEED,
  )
  out['config'] = np.array(json.dumps(config))
  out['param_shapes'] = np.array(
    json.dumps({k: list(p.shape) for k, p in model.named_parameters()})
  )
  out['buffer_shapes'] = np.array(
    json.dumps({k: list(b.shape) for k, b in model.named_buffers()})
  )
  np.savez_compressed(args.out, **out)
  print(
    f'commit {commit}, torch {torch.__version__}, cfg {cfg}, tau {tau}; '
    f'wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KB)'
  )


if __name__ == '__main__':
  main()
