"""LoRA adapters in checkpoints (`rl.lora`): the optional ``lora/`` part.

A checkpoint written by an RL run with ``config.rl.lora.rank > 0`` holds the
merged parameters plus ``lora/`` (the adapters) and a manifest entry
``'lora'`` (rank, alpha, targets, the base checkpoint and its fingerprint).
A *separate* export (``varrl_jax.export --lora=separate``) holds only
``lora/``: `varrl_jax.checkpoint.load_params` then loads the base named in
its manifest (checked against the recorded fingerprint) and merges the
adapters, so every command that loads weights takes it like any checkpoint.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from varrl_jax import checkpoint as ckpt
from varrl_jax import fs


def load_adapters(path: str, lora, shardings=None) -> dict:
  """The LoRA adapters (part 'lora') of the checkpoint at ``path``, restored
  onto ``lora``'s abstract adapters (`rl.lora.Lora`; its rank and targets)
  with ``shardings`` (default: the first local device)."""
  path = fs.resolve(path)
  manifest = ckpt.read_manifest(path)
  directory = fs.join(path, ckpt.LORA_PART)
  if ckpt.LORA_PART not in manifest['parts'] or not fs.isdir(directory):
    raise ckpt.CheckpointError(
      f'checkpoint {path}: holds no LoRA adapters (trained with config.rl.lora.rank=0?)'
    )
  abstract = jax.eval_shape(lora.init, jax.random.key(0))
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    abstract,
    shardings,
  )
  out, error = None, None
  with ocp.StandardCheckpointer() as ckptr:
    try:
      meta = ckptr.metadata(directory).item_metadata
      problem = ckpt._check_structure(
        ckpt._flat_shapes(getattr(meta, 'tree', meta)), ckpt._flat_shapes(abstract)
      )
      if problem:
        error = ckpt.CheckpointError(f'checkpoint {path}: lora: {problem}')
      else:
        out = ckptr.restore(directory, abstract)
    except Exception as e:  # orbax/tensorstore raise many types on bad files
      error = ckpt.CheckpointError(
        f'checkpoint {path}: lora: unreadable ({ckpt._first_line(e)})'
      )
  if error is not None:
    raise error
  return out


def is_separate_lora(manifest: dict, parts) -> bool:
  return (
    ckpt.LORA_PART in manifest['parts']
    and bool(set(parts) - set(manifest['parts']))
    and bool((manifest.get('lora') or {}).get('base'))
  )


def load_separate_lora(path, model, parts, manifest, config, shardings) -> dict:
  """Base (from the manifest) + adapters merged: a separate LoRA export."""
  from varrl_jax.rl import lora as lora_lib

  rec = manifest['lora']
  base = ckpt.load_params(rec['base'], model, parts, config=config, shardings=shardings)
  if 'transformer' not in parts:
    return base
  if rec.get('fingerprint_version') == ckpt.FINGERPRINT_VERSION:
    digest = ckpt.fingerprint(base['transformer'])
    if digest != rec['base_fingerprint']:
      raise ckpt.CheckpointError(
        f'checkpoint {path}: its LoRA adapters were trained on {rec["base"]} with '
        f'weights digest {rec["base_fingerprint"]}, but that checkpoint now has '
        f'digest {digest} (other weights)'
      )
  lora = lora_lib.for_model(model, rec['rank'], rec['alpha'], rec['targets'])
  tr_shardings = None if shardings is None else shardings['transformer']
  mesh = None
  if tr_shardings is not None:
    mesh = getattr(jax.tree.leaves(tr_shardings)[0], 'mesh', None)
  adapters = load_adapters(path, lora, None if mesh is None else lora.shardings(mesh))
  kwargs = {} if tr_shardings is None else {'out_shardings': tr_shardings}
  merge = jax.jit(lora.merge, **kwargs)
  return dict(base, transformer=merge(base['transformer'], adapters))
