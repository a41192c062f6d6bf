"""Device mesh, logical-axis rules and sharded initialisation.

Every transformer parameter carries logical axis names (``embed``, ``mlp``,
``heads``, ``kv_heads``, ``kv``, ``vocab``, ``layers``, ...). One rule table
maps them to the mesh axes ``('data', 'fsdp', 'tensor')``:

- ``data``: pure data parallelism (batch only);
- ``fsdp``: batch and the ``embed`` dimension of every weight (ZeRO-3 style);
- ``tensor``: Megatron-style split of heads / MLP / vocabulary.

The same code runs on 1 CPU device, on fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and on a TPU pod.
Parameters are created already sharded: ``jax.eval_shape`` of the init gives
the logical specs, the rules turn them into ``NamedSharding``s, and the init
is jitted with those ``out_shardings`` (no full copy on any one device).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical axis -> mesh axes (None: replicated). kv_heads stay replicated: GQA
# models have few kv heads (4 in cvtg.py), often fewer than the tensor axis.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ('batch', ('data', 'fsdp')),
  ('embed', 'fsdp'),
  ('mlp', 'tensor'),
  ('heads', 'tensor'),
  ('kv_heads', None),
  ('kv', None),
  ('vocab', 'tensor'),
  ('layers', None),
  ('length', None),
  ('text_vocab', None),
  ('text_length', None),
  ('quote_slots', None),
  ('image_length', None),
  ('scales', None),
  ('latent', None),
  # The VAR family (models/var_official): class table, AdaLN modulations.
  ('classes', None),
  ('start_length', None),
  ('cond_embed', None),
  ('adaln', None),
  ('qkv', None),
  # Infinity (models/infinity) and Flan-T5 (models/t5.py): the text encoder's
  # width, the 2 classes of a bit, T5's relative-position buckets.
  ('text_embed', None),
  ('bit_class', None),
  ('rel_buckets', None),
)


def mesh_shape(
  mesh_cfg: ml_collections.ConfigDict, num_devices: int
) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes; one of them may be -1 (fill the rest)."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(
      f'config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}'
    )
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(
        f'config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not '
        f'divisible by the fixed axes ({fixed})'
      )
    sizes[sizes.index(-1)] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(
      f'config.mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, '
      f'{num_devices} are present'
    )
  return tuple(sizes)


def make_mesh(
  mesh_cfg: ml_collections.ConfigDict, devices: Sequence | None = None
) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over ``devices`` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_shardings(mesh: Mesh, abstract_boxed, rules=LOGICAL_RULES):
  """NamedShardings of a boxed (logically annotated) tree; plain leaves replicate."""
  specs = nn.get_partition_spec(abstract_boxed)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def sharded_init(model, key: jax.Array, mesh: Mesh, rules=LOGICAL_RULES):
  """(params, shardings): the model's parameters created sharded on ``mesh``."""
  abstract = jax.eval_shape(model.init_boxed, key)
  shardings = nn.unbox(logical_shardings(mesh, abstract, rules))
  init = jax.jit(lambda k: nn.unbox(model.init_boxed(k)), out_shardings=shardings)
  return init(key), shardings


@contextlib.contextmanager
def mesh_context(mesh: Mesh):
  """Trace (jit, lower) inside this: ``jax.set_mesh(mesh)``, so the model's
  activation constraints take effect and the splash-attention kernel finds
  the mesh it is ``shard_map``-ped over."""
  with jax.set_mesh(mesh):
    yield


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading axis over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(('data', 'fsdp'), *([None] * (ndim - 1))))


def rows_like(mesh: Mesh, tree):
  """`batch_sharding` of every leaf of ``tree`` (arrays or ShapeDtypeStructs
  whose leading axis is the batch), by the leaf's rank."""
  return jax.tree.map(lambda x: batch_sharding(mesh, len(x.shape)), tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(mesh: Mesh, batch, batch_size: int):
  """Places a batch dict: arrays whose leading axis is the batch are split over
  ('data', 'fsdp'); everything else (scalars, per-token weights) replicates."""
  if batch_size % (mesh.shape['data'] * mesh.shape['fsdp']):
    raise ValueError(
      f'batch of {batch_size} rows does not divide over data x fsdp = '
      f'{mesh.shape["data"] * mesh.shape["fsdp"]} devices'
    )

  def place(x):
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    if x.ndim == 0 or x.shape[0] != batch_size:
      return jax.device_put(x, replicated(mesh))
    return jax.device_put(x, batch_sharding(mesh, x.ndim))

  return jax.tree.map(place, batch)


def param_shardings(model, mesh: Mesh, rules=LOGICAL_RULES) -> dict:
  """NamedShardings of the model's unboxed parameters (both parts), by the rules."""
  abstract = jax.eval_shape(model.init_boxed, jax.random.key(0))
  return nn.unbox(logical_shardings(mesh, abstract, rules))


def _dict_path(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def like_params(tree, params, shardings, mesh: Mesh):
  """Shardings for a tree whose leaves mirror ``params`` (Adam's mu and nu):
  the parameter's sharding where the dict path and the shape match, else
  replicated (step counts, empty states)."""
  by_path = {
    _dict_path(p): (leaf.shape, s)
    for (p, leaf), s in zip(
      jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(shardings)
    )
  }

  def pick(path, leaf):
    shape, s = by_path.get(_dict_path(path), (None, None))
    return s if shape == leaf.shape else replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, tree)


def data_rows(mesh: Mesh) -> int:
  """How many ways a batch is split: data x fsdp."""
  return mesh.shape['data'] * mesh.shape['fsdp']


def check_rows(mesh: Mesh, rows: int, what: str) -> None:
  if rows % data_rows(mesh):
    raise ValueError(
      f'{what}: {rows} rows do not divide over data x fsdp = {data_rows(mesh)} '
      'devices (change the batch or config.mesh)'
    )


def put(tree, shardings, copy: bool = False):
  """Places every leaf of ``tree`` with the matching sharding of ``shardings``.

  Leaves may be host arrays or arrays on any device(s). With several processes
  a leaf that is not already a global array must hold the same value in every
  process (each takes its own shards of it). ``copy``: never alias the input
  buffers (for a tree that a jitted step will donate while the input lives on).
  """
  placed = _put(tree, shardings)
  # Not device_put(may_alias=False): it still reuses the input's buffer for
  # the shard on the input's device (replicated targets, JAX 0.10).
  return jax.tree.map(lambda x: x.copy(), placed) if copy else placed


def _put(tree, shardings):
  multi = jax.process_count() > 1

  def place(x, s):
    if multi and not (isinstance(x, jax.Array) and not x.is_fully_addressable):
      # A process-local array: go through the host (device_put of a local
      # device array onto a global sharding is refused).
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jax.device_put(np.asarray(jax.random.key_data(x)), s)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
      x = np.asarray(x)
    return jax.device_put(x, s)

  return jax.tree.map(place, tree, shardings)


def mesh_jit(fn, mesh: Mesh | None, **jit_kwargs):
  """``jax.jit(fn, **jit_kwargs)``; with a mesh, every call and ``lower`` runs
  inside `mesh_context` (so tracing sees the mesh: activation constraints,
  the splash kernel's ``shard_map``)."""
  jitted = jax.jit(fn, **jit_kwargs)
  return jitted if mesh is None else _InMesh(jitted, mesh)


class _InMesh:
  def __init__(self, jitted, mesh: Mesh):
    self.jitted, self.mesh = jitted, mesh

  def __call__(self, *args, **kwargs):
    with mesh_context(self.mesh):
      return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with mesh_context(self.mesh):
      return self.jitted.lower(*args, **kwargs)
