"""Block-causal grouped-query attention.

The sequence is ``[text | scale 0 | scale 1 | ... | scale S-1]``. Every
position carries a segment id: 0 for text, s + 1 for image scale s. A query
sees a key iff ``seg(key) <= seg(query)`` and the key is not padding: text
sees all of the (valid) text, and a token of scale s sees the text, every
coarser scale and all of its own scale. The mask is never materialised as a
[T, T] input array; it is built from the segment ids inside the kernel.

The implementation is chosen by ``config.model.attention``:

- ``plain``: XLA einsum + softmax; runs everywhere. At the paper's ~10k
  tokens its [T, T] float32 scores do not fit in TPU HBM (AOT-compiled for
  v5p-128: ~1 TB of temporaries per chip).
- ``splash``: the Pallas TPU splash-attention kernel (flash attention with
  block sparsity); TPU only (on a CPU host it can be compiled ahead of time
  for a TPU topology, `varrl_jax.aot`, or run in Pallas interpret mode, which
  the tests do). The block-causal mask is a causal mask over remapped query
  positions (`BlockCausalMask`: a query "sits" at the last key of its
  segment), computed inside the kernel, and key padding is the kernel's
  segment ids (query 0, valid key 0, padded key 1). Mosaic kernels are not
  partitioned by XLA, so the kernel runs inside ``jax.shard_map`` over the
  mesh of the ``jax.set_mesh`` context (`parallel.mesh_context`): batch over
  ('data', 'fsdp'), heads over 'tensor' where both head counts divide;
  without a mesh context it runs unmapped (one device). Calls with fewer
  than `SPLASH_MIN_QUERIES` queries (the KV-cache steps of the first
  scales: at most 127 x ~1.6k scores a head) use ``plain``: padding them to
  a 128-row block would cost more than their scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import (
  splash_attention_kernel as splash_kernel,
)
from jax.experimental.pallas.ops.tpu.splash_attention import (
  splash_attention_mask as splash_mask,
)
from jax.sharding import PartitionSpec as P

SPLASH_MIN_QUERIES = 128
SPLASH_MAX_BLOCK = 512  # tile edge of the kernel (queries and keys)


def block_causal_mask(
  q_seg: jnp.ndarray, k_seg: jnp.ndarray, k_valid: jnp.ndarray
) -> jnp.ndarray:
  """bool [B, Tq, Tk]: may query q attend to key k."""
  allowed = k_seg[None, :] <= q_seg[:, None]
  return allowed[None] & k_valid[:, None, :]


def plain_attention(
  q_bqhd: jnp.ndarray,
  k_bkgd: jnp.ndarray,
  v_bkgd: jnp.ndarray,
  q_seg: jnp.ndarray,
  k_seg: jnp.ndarray,
  k_valid: jnp.ndarray,
  scale: float | None = None,
) -> jnp.ndarray:
  """softmax(scale q k^T + mask) v with H query heads over G kv heads.

  ``scale`` defaults to 1 / sqrt(D) (VAR's L2-normalised attention uses 1).

  Shapes: q [B, Tq, H, D], k/v [B, Tk, G, D] (H divisible by G),
  q_seg int [Tq], k_seg int [Tk], k_valid bool [B, Tk]. Returns [B, Tq, H, D].
  Scores and softmax are float32 whatever the input dtype.
  """
  groups = query_groups(q_seg, k_seg)
  if len(groups) > 1:
    return jnp.concatenate(
      [
        _plain(
          q_bqhd[:, qs:qe],
          k_bkgd[:, :ke],
          v_bkgd[:, :ke],
          q_seg[qs:qe],
          k_seg[:ke],
          k_valid[:, :ke],
          scale,
        )
        for qs, qe, ke in groups
      ],
      axis=1,
    )
  return _plain(q_bqhd, k_bkgd, v_bkgd, q_seg, k_seg, k_valid, scale)


def _plain(q_bqhd, k_bkgd, v_bkgd, q_seg, k_seg, k_valid, scale):
  b, tq, h, d = q_bqhd.shape
  g = k_bkgd.shape[2]
  # Heads-major layouts make both products plain batched matmuls over (b, g)
  # with the r query heads of a kv head folded into the rows. On XLA:CPU
  # (B=8, T=580, H=4, G=2, D=64) a call took 106 ms against 235 ms when
  # contracting the [B, T, H, D] layout directly.
  q = q_bqhd.reshape(b, tq, g, h // g, d).transpose(0, 2, 3, 1, 4)  # [B, G, R, Tq, D]
  k = k_bkgd.transpose(0, 2, 1, 3)  # [B, G, Tk, D]
  v = v_bkgd.transpose(0, 2, 1, 3)
  scores = jnp.einsum('bgrqd,bgkd->bgrqk', q, k, preferred_element_type=jnp.float32)
  scores = scores * (d**-0.5 if scale is None else scale)
  mask = block_causal_mask(q_seg, k_seg, k_valid)[:, None, None]
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum('bgrqk,bgkd->bgrqd', probs, v)  # [B, G, R, Tq, D]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, tq, h, d)


# Score elements one more query group is worth (a pair of small batched
# matmuls and a softmax more); tiny's step, 2 cores: see `query_groups`.
GROUP_OVERHEAD = 4096


def query_groups(q_seg, k_seg) -> list[tuple[int, int, int]]:
  """Static (q_start, q_end, k_end) blocks covering the queries, each seeing
  only the keys [0, k_end) it may attend to, chosen to minimise the computed
  scores plus `GROUP_OVERHEAD` per block; one block when the segments are
  traced or not laid out in order."""
  if isinstance(q_seg, jax.core.Tracer) or isinstance(k_seg, jax.core.Tracer):
    return [(0, len(q_seg), len(k_seg))]
  q_seg, k_seg = np.asarray(q_seg), np.asarray(k_seg)
  tq, tk = len(q_seg), len(k_seg)
  if tq < 2 or np.any(np.diff(q_seg) < 0) or np.any(np.diff(k_seg) < 0):
    return [(0, tq, tk)]
  last = np.searchsorted(k_seg, q_seg, side='right')  # keys visible: [0, last)
  starts = np.flatnonzero(np.diff(q_seg, prepend=q_seg[0] - 1))
  ends = np.append(starts[1:], tq)
  # best[j]: the cheapest cover of runs [0, j); one block = runs [i, j).
  best, choice = [0] + [None] * len(starts), [0] * (len(starts) + 1)
  for j in range(1, len(starts) + 1):
    for i in range(j):
      cost = best[i] + (ends[j - 1] - starts[i]) * max(int(last[ends[j - 1] - 1]), 1)
      cost += GROUP_OVERHEAD
      if best[j] is None or cost < best[j]:
        best[j], choice[j] = cost, i
  out, j = [], len(starts)
  while j > 0:
    i = choice[j]
    out.append((int(starts[i]), int(ends[j - 1]), max(int(last[ends[j - 1] - 1]), 1)))
    j = i
  return out[::-1]


def last_visible_key(q_seg: np.ndarray, k_seg: np.ndarray) -> np.ndarray:
  """int32 [Tq]: the last key index each query may see.

  Keys are laid out by segment ([text | scale 0 | scale 1 | ...]), so
  ``seg(k) <= seg(q)`` holds exactly for the keys k <= last(q): the
  block-causal mask is a causal mask with each query moved to the end of
  its segment.
  """
  q_seg, k_seg = np.asarray(q_seg), np.asarray(k_seg)
  if np.any(np.diff(k_seg) < 0):
    raise ValueError('key segments must be non-decreasing')
  return (np.searchsorted(k_seg, q_seg, side='right') - 1).astype(np.int32)


class BlockCausalMask(splash_mask.Mask):
  """Splash mask ``[Tq, Tk]``: key k visible to query q iff k <= last[q].

  ``last`` is `last_visible_key` (padded rows: any value). Like the library's
  computable masks it has ``q_sequence`` + ``mask_function``, so the kernel
  evaluates it from the [Tq] vector instead of loading [Tq, Tk] mask blocks.
  """

  def __init__(self, last: np.ndarray, num_keys: int):
    self.q_sequence = np.asarray(last, np.int32)
    self._shape = (len(self.q_sequence), int(num_keys))

  @staticmethod
  def mask_function(q_ids, kv_ids):
    return q_ids >= kv_ids

  @property
  def shape(self) -> tuple[int, int]:
    return self._shape

  def __getitem__(self, idx) -> np.ndarray:
    q_slice, kv_slice = idx
    rows = self.q_sequence[q_slice]
    cols = np.arange(self.shape[1])[kv_slice]
    return self.mask_function(rows[:, None], cols[None, :])

  def __eq__(self, other) -> bool:
    return (
      isinstance(other, BlockCausalMask)
      and self.shape == other.shape
      and np.array_equal(self.q_sequence, other.q_sequence)
    )

  def __hash__(self) -> int:
    return hash((BlockCausalMask, self.shape, self.q_sequence.tobytes()))


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _block(n: int) -> int:
  return min(SPLASH_MAX_BLOCK, _round_up(n, 128))


def _splash_kernel(
  num_heads: int, last: np.ndarray, num_keys: int, bq: int, bk: int, interpret: bool
):
  """The kernel for one shape. Built per trace (its mask-info arrays are
  trace constants); the host work on the mask is cached by the library."""
  mask = splash_mask.MultiHeadMask([BlockCausalMask(last, num_keys)] * num_heads)
  blocks = splash_kernel.BlockSizes(
    block_q=bq,
    block_kv=bk,
    block_kv_compute=bk,
    block_q_dkv=bq,
    block_kv_dkv=bk,
    block_kv_dkv_compute=bk,
    block_q_dq=bq,
    block_kv_dq=bk,
  )
  return splash_kernel.make_splash_mha(
    mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret
  )


def splash_attention(
  q_bqhd: jnp.ndarray,
  k_bkgd: jnp.ndarray,
  v_bkgd: jnp.ndarray,
  q_seg,
  k_seg,
  k_valid: jnp.ndarray,
  scale: float | None = None,
  *,
  interpret: bool = False,
) -> jnp.ndarray:
  """`plain_attention` with the Pallas splash kernel (see module docstring).

  Same shapes and result; ``q_seg`` / ``k_seg`` must be static (NumPy).
  Sequences are padded to the kernel's tile (padded keys are invalid,
  padded queries are dropped). ``interpret`` runs the kernel in Pallas
  interpret mode (any backend; for tests).
  """
  b, tq, h, d = q_bqhd.shape
  tk, g = k_bkgd.shape[1], k_bkgd.shape[2]
  bq, bk = _block(tq), _block(tk)
  tq_pad, tk_pad = _round_up(tq, bq), _round_up(tk, bk)
  last = np.full(tq_pad, tk_pad - 1, np.int32)
  last[:tq] = last_visible_key(q_seg, k_seg)

  def heads_major(x, t_pad):  # [B, T, N, D] -> [B, N, T_pad, D]
    x = jnp.pad(x, ((0, 0), (0, t_pad - x.shape[1]), (0, 0), (0, 0)))
    return x.transpose(0, 2, 1, 3)

  scale = d**-0.5 if scale is None else scale
  q = heads_major(q_bqhd * jnp.asarray(scale, q_bqhd.dtype), tq_pad)
  k, v = heads_major(k_bkgd, tk_pad), heads_major(v_bkgd, tk_pad)
  kv_ids = jnp.pad(
    jnp.where(k_valid, 0, 1).astype(jnp.int32),
    ((0, 0), (0, tk_pad - tk)),
    constant_values=1,
  )

  def local(q, k, v, kv_ids):
    kernel = _splash_kernel(q.shape[1], last, tk_pad, bq, bk, interpret)
    q_ids = jnp.zeros((tq_pad,), jnp.int32)

    def one(q, k, v, kv):
      return kernel(q, k, v, splash_kernel.SegmentIds(q=q_ids, kv=kv))

    return jax.vmap(one)(q, k, v, kv_ids)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = local(q, k, v, kv_ids)
  else:
    sizes = dict(mesh.shape)
    batch_axes = tuple(a for a in ('data', 'fsdp') if sizes.get(a, 1) > 1)
    if b % int(np.prod([sizes[a] for a in batch_axes])):
      batch_axes = ()
    t = sizes.get('tensor', 1)
    heads = 'tensor' if t > 1 and h % t == 0 and g % t == 0 else None
    batch = batch_axes or None
    spec = P(batch, heads, None, None)
    out = jax.shard_map(
      local,
      in_specs=(spec, spec, spec, P(batch, None)),
      out_specs=spec,
      check_vma=False,
    )(q, k, v, kv_ids)
  return out[:, :, :tq].transpose(0, 2, 1, 3)


# Above this many scores per (row, head) the cached step is computed a few
# (row, head) pairs at a time, so each block's scores stay in the CPU cache.
CACHED_BLOCK_SCORES = 64 * 1024
CACHED_BLOCK_PAIRS = 4


def _softmax_values(s: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """softmax(s) v over the last axis of float32 scores s [..., Tq, Tk] and
  values v [..., Tk, D], normalised after the value product (one pass less
  over the scores); in v's dtype."""
  e = jnp.exp(s - jax.lax.stop_gradient(s.max(-1, keepdims=True)))
  o = jnp.einsum('...qk,...kd->...qd', e.astype(v.dtype), v)
  return (o / e.sum(-1, keepdims=True)).astype(v.dtype)


def cached_attention(
  q_bqhd: jnp.ndarray, k_bhkd: jnp.ndarray, v_bhkd: jnp.ndarray, scale: float
) -> jnp.ndarray:
  """softmax(scale q k^T) v for a KV-cached step whose queries see every key.

  Keys and values heads-major, [B, H, Tk, D] (the cache layout: no
  transposes of the whole cache per layer), q [B, Tq, H, D]; returns
  [B, Tq, H, D]. The softmax is normalised after the value product (one
  pass less over the scores). On XLA:CPU at VAR-d16's last scale (16 rows,
  16 heads, 256 x 680 scores) this took 74 ms against 301 ms for
  `plain_attention`; large steps run ``CACHED_BLOCK_PAIRS`` (row, head)
  pairs at a time, whose scores fit in cache.
  """
  b, tq, h, d = q_bqhd.shape
  tk = k_bhkd.shape[2]
  q = q_bqhd.transpose(0, 2, 1, 3)

  def block(q, k, v):
    s = jnp.einsum('...qd,...kd->...qk', q, k, preferred_element_type=jnp.float32)
    return _softmax_values(s * scale, v)

  pairs = b * h
  if tq * tk <= CACHED_BLOCK_SCORES or pairs % CACHED_BLOCK_PAIRS:
    out = block(q, k_bhkd, v_bhkd)
  else:
    n = pairs // CACHED_BLOCK_PAIRS
    split = lambda x: x.reshape(n, CACHED_BLOCK_PAIRS, *x.shape[2:])  # noqa: E731
    out = jax.lax.map(lambda a: block(*a), (split(q), split(k_bhkd), split(v_bhkd)))
    out = out.reshape(b, h, tq, d)
  return out.transpose(0, 2, 1, 3)


def cached_attention_kt(
  q_bqhd: jnp.ndarray,
  kt_bgdk: jnp.ndarray,
  v_bgkd: jnp.ndarray,
  k_valid: jnp.ndarray,
  scale: float | None = None,
) -> jnp.ndarray:
  """softmax(scale q k^T + mask) v for a cached pass whose queries see every
  valid key, with keys stored transposed.

  q [B, Tq, H, D] (H = G R: the R query heads of a kv head are adjacent, as
  in `plain_attention`), keys [B, G, D, Tk], values [B, G, Tk, D], k_valid
  bool [B, Tk]; returns [B, Tq, H, D]. Both products are plain batched
  matmuls over (B, G) with the R Tq queries as rows: no copy of the cache.
  Scores float32; the softmax is normalised after the value product.
  """
  b, tq, h, d = q_bqhd.shape
  g = kt_bgdk.shape[1]
  r = h // g
  q = q_bqhd.reshape(b, tq, g, r, d).transpose(0, 2, 3, 1, 4).reshape(b, g, r * tq, d)
  s = jnp.einsum('bgqd,bgdk->bgqk', q, kt_bgdk, preferred_element_type=jnp.float32)
  s = s * (d**-0.5 if scale is None else scale)
  s = jnp.where(k_valid[:, None, None], s, jnp.finfo(jnp.float32).min)
  o = _softmax_values(s, v_bgkd)
  return o.reshape(b, g, r, tq, d).transpose(0, 3, 1, 2, 4).reshape(b, tq, h, d)


def attention(impl: str, *args, scale: float | None = None) -> jnp.ndarray:
  """Dispatches to the configured implementation (see module docstring)."""
  if impl == 'plain':
    return plain_attention(*args, scale=scale)
  if impl == 'splash':
    if args[0].shape[1] < SPLASH_MIN_QUERIES:
      return plain_attention(*args, scale=scale)
    return splash_attention(*args, scale=scale)
  raise ValueError(f"config.model.attention must be 'plain' or 'splash', got {impl!r}")
