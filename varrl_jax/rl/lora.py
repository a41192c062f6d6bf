"""LoRA adapters for RL: low-rank updates of chosen kernels, family-agnostic.

``config.rl.lora.rank = r > 0`` trains, for every transformer kernel W whose
'/'-joined parameter path (e.g. ``params/layers/q/kernel``) fully matches one
of the regular expressions of ``config.rl.lora.targets``, two adapters

    A: [*lead, *in, r]   (normal, std 1 / sqrt(prod in); Hu et al. 2021)
    B: [*lead, r, *out]  (zeros, so the adapted model starts as the base)

and the policy uses the effective kernel

    W' = W + (alpha / r) A B        (contracting the r axis)

Axes of a kernel: ``lead`` are its leading ``layers`` axes (scanned layers
stack one kernel per layer; each layer gets its own adapters); ``in`` are the
axes the layer contracts with its input, ``out`` the rest. The split comes
from the logical axis names every parameter carries, with the width axes
``embed``, ``mlp``, ``cond_embed``, ``latent``: a kernel whose first axis is
a width axis reads that axis (q/k/v ``[embed, heads, kv]``: in = (embed,),
out = (heads, kv); ``wo`` / ``fc2`` ``[mlp, embed]``: in = (mlp,)); else it
reads the axes before its first width axis (the attention output
``[heads, kv, embed]``: in = (heads, kv), out = (embed,)). A kernel without
a width axis splits after its first non-layer axis. The adapters keep the kernel's axes unflattened
and carry the kernel's logical names (plus ``lora_rank``, never sharded), so
they shard like the kernel by the same rule table.

The merge is functional (`Lora.merge`): the train step, the reference and
the sampler call the family's ordinary ``apply`` on merged parameters, so
every family works unchanged. Consequences (DESIGN.md section 6):

- the trainable pytree (`grpo.TrainState.params`) is the adapters alone, and
  the optimizer state exists only for them; the base parameters are an
  argument of the step that is neither differentiated nor donated;
- the reference policy of the KL term is the base with adapters off, i.e.
  the base parameters themselves: no second copy;
- the sampler needs W' materialised: `Lora.merge` runs once per rollout
  batch (one transformer-sized buffer while sampling, freed after it).

Rank 0 (the default) is full fine-tuning: `from_config` returns None and no
adapter is ever built.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from varrl_jax import parallel

# Logical names after which a kernel's input axes end (see module docstring).
WIDTH_AXES = ('embed', 'mlp', 'cond_embed', 'latent')
STACK_AXES = ('layers',)
RANK_AXIS = 'lora_rank'
RULES = (*parallel.LOGICAL_RULES, (RANK_AXIS, None))


@dataclasses.dataclass(frozen=True)
class Target:
  """One adapted kernel: its path and the (lead, in, out) split of its axes."""

  path: tuple[str, ...]
  lead: tuple[int, ...]
  fan_in: tuple[int, ...]
  fan_out: tuple[int, ...]
  names: tuple[str | None, ...]

  @property
  def a_names(self) -> tuple:
    return (*self.names[: len(self.lead) + len(self.fan_in)], RANK_AXIS)

  @property
  def b_names(self) -> tuple:
    lead = self.names[: len(self.lead)]
    return (*lead, RANK_AXIS, *self.names[len(self.lead) + len(self.fan_in) :])


def _split(shape: tuple[int, ...], names: tuple) -> tuple[int, int]:
  """(number of lead axes, index where the out axes start)."""
  lead = 0
  while lead < len(shape) - 2 and names[lead] in STACK_AXES:
    lead += 1
  rest = names[lead:]
  width = [i for i, n in enumerate(rest) if n in WIDTH_AXES]
  # A kernel that starts with a width axis reads it; otherwise it reads the
  # axes before its first width axis (which it writes).
  return lead, lead + (width[0] if width and width[0] > 0 else 1)


def parse_targets(targets: str) -> list[str]:
  return [t.strip() for t in str(targets).split(',') if t.strip()]


def find_targets(boxed_transformer, targets: str) -> list[Target]:
  """The kernels of a boxed (``nn.Partitioned``) transformer tree matched by
  ``targets`` (comma-separated regular expressions, each matched in full
  against the '/'-joined path); ValueError naming the key if none matches."""
  patterns = [re.compile(p) for p in parse_targets(targets)]
  leaves = jax.tree_util.tree_flatten_with_path(
    boxed_transformer, is_leaf=lambda x: isinstance(x, nn.Partitioned)
  )[0]
  found, kernels = [], []
  for keypath, leaf in leaves:
    path = tuple(str(k.key) for k in keypath)
    value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    names = tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else None
    if path[-1] == 'kernel':
      kernels.append('/'.join(path))
    if not any(p.fullmatch('/'.join(path)) for p in patterns):
      continue
    shape = tuple(value.shape)
    if len(shape) < 2:
      raise ValueError(
        f'config.rl.lora.targets: {"/".join(path)} has shape {shape}; LoRA '
        'adapts kernels of 2 or more axes'
      )
    names = names or (None,) * len(shape)
    lead, cut = _split(shape, names)
    found.append(Target(path, shape[:lead], shape[lead:cut], shape[cut:], names))
  if not found:
    raise ValueError(
      f'config.rl.lora.targets={targets!r} matches no transformer parameter '
      f'(kernels: {", ".join(kernels[:12])})'
    )
  return found


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: dict, path, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


@dataclasses.dataclass(frozen=True)
class Lora:
  """The adapters' layout for one model: rank r, scale alpha / r, targets."""

  rank: int
  alpha: float
  targets: tuple[Target, ...]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def init_boxed(self, key: jax.Array, dtype=jnp.float32) -> dict:
    """Adapters ``{path...: {'lora_a': A, 'lora_b': B}}``, boxed with names."""
    out: dict = {}
    for i, t in enumerate(self.targets):
      std = 1.0 / math.sqrt(math.prod(t.fan_in))
      a = std * jax.random.normal(
        jax.random.fold_in(key, i), (*t.lead, *t.fan_in, self.rank), dtype
      )
      b = jnp.zeros((*t.lead, self.rank, *t.fan_out), dtype)
      _set(
        out,
        t.path,
        {
          'lora_a': nn.Partitioned(a, names=t.a_names),
          'lora_b': nn.Partitioned(b, names=t.b_names),
        },
      )
    return out

  def init(self, key: jax.Array, dtype=jnp.float32) -> dict:
    return nn.unbox(self.init_boxed(key, dtype))

  def shardings(self, mesh) -> dict:
    """NamedShardings of the adapters by the logical rules (r replicated)."""
    boxed = jax.eval_shape(self.init_boxed, jax.random.key(0))
    return nn.unbox(parallel.logical_shardings(mesh, boxed, RULES))

  def delta(self, t: Target, adapters) -> jax.Array:
    """(alpha / r) A B of one target, in the kernel's shape [*lead, *in, *out]."""
    ab = _get(adapters, t.path)
    n_lead, size_in = len(t.lead), math.prod(t.fan_in)
    a = ab['lora_a'].reshape(*t.lead, size_in, self.rank)
    b = ab['lora_b'].reshape(*t.lead, self.rank, math.prod(t.fan_out))
    spec = 'abcdefgh'[:n_lead]
    d = jnp.einsum(f'{spec}ir,{spec}ro->{spec}io', a, b)
    return (self.scale * d).reshape(*t.lead, *t.fan_in, *t.fan_out)

  def merge(self, base, adapters) -> Any:
    """W' = W + (alpha / r) A B for every target; other leaves are ``base``'s
    own arrays (a new tree, ``base`` is not changed)."""
    merged = jax.tree.map(lambda x: x, base)
    for t in self.targets:
      w = _get(base, t.path)
      _set(merged, t.path, (w + self.delta(t, adapters).astype(w.dtype)))
    return merged


def for_model(model, rank: int, alpha: float, targets: str) -> Lora:
  """The `Lora` of rank ``rank`` > 0 on ``model``'s transformer kernels."""
  boxed = jax.eval_shape(model.init_boxed, jax.random.key(0))['transformer']
  return Lora(int(rank), float(alpha), tuple(find_targets(boxed, targets)))


def from_config(lora_cfg: ml_collections.ConfigDict, model) -> Lora | None:
  """The `Lora` of ``config.rl.lora`` for ``model``; None at rank 0."""
  rank = int(lora_cfg.rank)
  if rank < 0:
    raise ValueError(f'config.rl.lora.rank must be >= 0, got {rank}')
  if rank == 0:
    return None
  if float(lora_cfg.alpha) <= 0:
    raise ValueError(f'config.rl.lora.alpha must be > 0, got {lora_cfg.alpha}')
  return for_model(model, rank, lora_cfg.alpha, lora_cfg.targets)


def init_from_config(lora: Lora, seed: int, mesh=None) -> dict:
  """The run's initial adapters (key ``fold_in(key(seed), 0x10A)``), created
  sharded on ``mesh`` when given."""
  key = jax.random.fold_in(jax.random.key(seed), 0x10A)
  if mesh is None:
    return jax.jit(lora.init)(key)
  return jax.jit(lora.init, out_shardings=lora.shardings(mesh))(key)
