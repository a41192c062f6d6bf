"""Model FLOPs of a next-scale transformer, from its `TransformerDims`.

XLA's cost analysis counts the body of a loop once (the scan over layers)
and sees nothing inside Pallas kernels, so the compute term of the AOT
roofline (`varrl_jax.aot`) and the benchmarks' FLOP/s use this count:
matmuls of every layer, attention over the visible keys only (block-causal
across scales), cross-attention to the text where a family has it, the
vocabulary head on image tokens. Multiply-add = 2 FLOPs. Per row, N
positions (prefix + image tokens), l layers, width d, h query and g kv heads
of size D, MLP width f with m matrices (3: SwiGLU), vocabulary V on the L
image tokens, T_x cross-attended text tokens:

    F = 2 N l (d (h + 2 g) D + h D d + m d f)      projections and the MLP
      + 4 l h D sum_q vis(q)                       q k^T and p v over the keys
                                                   query q sees (block-causal)
      + 2 L d V                                    the head
      + l N (4 d h D + 4 h D T_x) + 4 l T_x d h D  cross-attention (if any)

The image-input projection (latent width C << V), norms, AdaLN (one matmul
per row), softmax, the loss and the optimizer are not counted. A train step
is 3 F (forward, backward); rematerialisation adds a forward that the
hardware runs but the model does not need: MFU divides model FLOPs (no
recomputation), the roofline's compute term uses hardware FLOPs.
"""

from __future__ import annotations

from varrl_jax.models import attention as attn_lib


def pass_flops(cfg, first: int, num_queries: int, head: bool) -> float:
  """FLOPs of one forward pass of one row: queries at positions
  [first, first + num_queries) against the keys before them (block-causal);
  ``head``: the vocabulary head on the image tokens among them. ``cfg`` is
  the family's `TransformerDims` (per-row AdaLN projections are not
  counted: one matmul per row, not per token)."""
  d, h, g, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  per_token = 2 * d * (h + 2 * g) * hd + 2 * h * hd * d
  per_token += 2 * cfg.mlp_mats * d * cfg.mlp_dim
  keys = cfg.segments(0, first + num_queries)
  queries = cfg.segments(first, num_queries)
  visible = float((attn_lib.last_visible_key(queries, keys) + 1).sum())
  flops = cfg.num_layers * (num_queries * per_token + 4 * h * hd * visible)
  if cfg.cross_len:  # cross-attention: q and out projections, scores, values
    cross = 4 * d * h * hd + 4 * h * hd * cfg.cross_len
    flops += cfg.num_layers * num_queries * cross
  return flops + (2 * d * cfg.vocab_size * int((queries > 0).sum()) if head else 0.0)


def forward_flops(cfg, num_scales: int) -> float:
  """F: one teacher-forced forward of one row over the first ``num_scales``
  scales (the prefix and the image tokens, the head on the image tokens)."""
  n = cfg.prefix_len + int(cfg.schedule.offsets[num_scales])
  return pass_flops(cfg, 0, n, head=True) + cross_kv_flops(cfg)


def train_flops(cfg, rows: int, num_scales: int, remat: bool = True) -> float:
  """Forward, backward (2x) and, with ``remat`` and ``cfg.remat`` set, the
  recomputed forward: ``(3 + r) F rows``. ``remat=False`` gives the model
  FLOPs (3 F rows) that MFU divides by: recomputation is the hardware's
  extra work, not the model's."""
  r = int(remat and cfg.remat != 'none')
  return rows * forward_flops(cfg, num_scales) * (3 + r)


def rl_update_flops(
  cfg, rows: int, num_scales: int, inner_updates: int, remat: bool = False
) -> float:
  """One RL update on ``rows`` rows: the reference policy's forward (the KL
  term's log pi_ref) and ``inner_updates`` train steps, the first of which
  takes its own log-probs as log pi_old (no separate forward):

      rows F (1 + inner_updates (3 + r)),   r = 1 only with ``remat`` and
                                            ``cfg.remat`` (hardware FLOPs)
  """
  fwd = rows * forward_flops(cfg, num_scales)
  return fwd + inner_updates * train_flops(cfg, rows, num_scales, remat)


def cross_kv_flops(cfg) -> float:
  """Keys and values of the cross-attention memory, once per row."""
  return cfg.num_layers * 4 * cfg.cross_len * cfg.d_model * cfg.num_heads * cfg.head_dim


def prefill_flops(cfg) -> float:
  """The prompt's pass into the KV cache, one row: every layer but the last
  in full, and of the last only its keys and values. Its queries, attention,
  output projection and MLP feed nothing the sampler reads, so the model
  math does not need them: an unrolled layer stack drops them (XLA removes
  the dead code), a scanned one runs them anyway (hardware FLOPs, as
  rematerialisation is)."""
  if not cfg.prefix_len:
    return 0.0
  full = pass_flops(cfg, 0, cfg.prefix_len, head=False)  # linear in the layers
  last_kv = 4 * cfg.d_model * cfg.num_kv_heads * cfg.head_dim * cfg.prefix_len
  return full * (cfg.num_layers - 1) / cfg.num_layers + last_kv


def sample_flops(cfg, rows: int) -> float:
  """Prefill (`prefill_flops`), then every scale against the KV cache."""
  sched = cfg.schedule
  flops = prefill_flops(cfg) + cross_kv_flops(cfg)
  for s in range(sched.num_scales):
    flops += pass_flops(
      cfg, cfg.prefix_len + int(sched.offsets[s]), int(sched.counts[s]), True
    )
  return rows * flops
