"""Model FLOPs of a next-scale transformer, from its `TransformerDims`.

XLA's cost analysis counts the body of a loop once (the scan over layers)
and sees nothing inside Pallas kernels, so the compute term of the AOT
roofline (`varrl_jax.aot`) and the benchmarks' FLOP/s use this count:
matmuls of every layer, attention over the visible keys only (block-causal
across scales), cross-attention to the text where a family has it, the
vocabulary head on image tokens.
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


def train_flops(cfg, rows: int, num_scales: int) -> float:
  """Forward, backward (2x) and, with remat, the recomputed forward."""
  n = cfg.prefix_len + int(cfg.schedule.offsets[num_scales])
  fwd = rows * (pass_flops(cfg, 0, n, head=True) + cross_kv_flops(cfg))
  return fwd * (3 + (cfg.remat != 'none'))


def cross_kv_flops(cfg) -> float:
  """Keys and values of the cross-attention memory, once per row."""
  return cfg.num_layers * 4 * cfg.cross_len * cfg.d_model * cfg.num_heads * cfg.head_dim


def sample_flops(cfg, rows: int) -> float:
  """Prefill, then every scale against the KV cache."""
  sched = cfg.schedule
  flops = pass_flops(cfg, 0, cfg.prefix_len, head=False) if cfg.prefix_len else 0.0
  flops += cross_kv_flops(cfg)
  for s in range(sched.num_scales):
    flops += pass_flops(
      cfg, cfg.prefix_len + int(sched.offsets[s]), int(sched.counts[s]), True
    )
  return rows * flops
