"""Parameter checkpoints: one directory of orbax arrays plus a JSON manifest.

Layout of a checkpoint directory::

    CKPT/
      manifest.json   {'format', 'parts', 'stage', 'step', 'command', 'data_seed',
                       'metrics', 'config', 'saved_at'}
      tokenizer/      orbax StandardCheckpointer tree of params['tokenizer']
      transformer/    params['transformer'] (absent after the tokenizer stage)

      lora/           optional: LoRA adapters of an RL run (`rl.lora`); the
                      manifest's 'lora' entry holds rank, alpha, targets,
                      the base checkpoint and its fingerprint

The two parts are separate trees so the tokenizer stage can be saved alone and
the transformer stage loads just that part. A transformer is only meaningful
with the tokenizer whose token ids it predicts, so a transformer checkpoint
always holds its tokenizer too: one directory is a complete model, and one
config key (``config.init_checkpoint``) names it. ``manifest.json`` is written
last, so a directory without it is an interrupted save.

Loading restores onto the abstract parameters of the *current* config
(``jax.eval_shape(model.init_boxed, key)``, unboxed): the tree structure and
every shape are compared with the checkpoint's metadata before an array is
read. Any failure (missing directory, missing or corrupt file, shape or
structure mismatch) is one `CheckpointError` line that names the path and
the command that recreates the checkpoint.

A *separate LoRA export* (``varrl_jax.export --lora=separate``) holds only
``lora/`` and names its base: `load_params` then loads the base (checked
against its recorded fingerprint) and returns it with the adapters merged,
so every command that loads weights takes it like any other checkpoint.

The full RL train state for exact resume (`TrainCheckpoints`, `fingerprint`)
lives in `varrl_jax.train_checkpoints`; it is importable from here too.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from varrl_jax import fs

PARTS = ('tokenizer', 'transformer')
LORA_PART = 'lora'
MANIFEST = 'manifest.json'
FORMAT = 1


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message is one line."""


def recreate_command(
  stage: str, workdir: str = 'WORKDIR', config_file: str = 'configs/tiny.py'
) -> str:
  """The pretraining command that writes ``WORKDIR/<stage>/checkpoints/final``."""
  return (
    f'python -m varrl_jax.pretrain --config={config_file} --stage={stage} '
    f'--workdir={workdir}'
  )


def _guess_recreate(path: str, stage: str) -> str:
  # Pretraining writes WORKDIR/<stage>/checkpoints/<name>: recover WORKDIR.
  m = re.match(r'(.*)/(tokenizer|transformer)/checkpoints/[^/]+/?$', path)
  return recreate_command(stage, m.group(1) if m else 'WORKDIR')


def _fail(path: str, problem: str, recreate: str) -> CheckpointError:
  return CheckpointError(f'checkpoint {path}: {problem}; recreate it with: {recreate}')


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def save_params(
  path: str, params: Mapping[str, Any], manifest: Mapping[str, Any]
) -> str:
  """Writes ``params`` (any of PARTS, boxed or not) and ``manifest`` to ``path``.

  An existing directory at ``path`` is replaced. ``manifest`` holds whatever
  describes the run (config as a dict, command, step, data seed, metrics); it
  must be JSON-serialisable. Returns the absolute path.
  """
  path = fs.resolve(path)
  unknown = sorted(set(params) - set(PARTS) - {LORA_PART})
  if unknown:
    raise ValueError(f'save_params: unknown parts {unknown}; expected some of {PARTS}')
  parts = [p for p in (*PARTS, LORA_PART) if p in params]
  if jax.process_index() == 0 and fs.exists(path):
    fs.rmtree(path)
  if jax.process_count() > 1:
    # No process may start writing before process 0 has cleared the path.
    multihost_utils.sync_global_devices(f'save_params:{path}')
  with ocp.StandardCheckpointer() as ckptr:
    for part in parts:
      ckptr.save(fs.join(path, part), nn.unbox(params[part]))
  # Written last: its presence marks a complete checkpoint.
  if jax.process_index() == 0:
    record = {
      **manifest,
      'format': FORMAT,
      'parts': parts,
      'saved_at': time.strftime('%Y-%m-%dT%H:%M:%S'),
    }
    fs.write_text(fs.join(path, MANIFEST), json.dumps(record, indent=1, sort_keys=True))
  return path


def read_manifest(path: str, recreate: str | None = None) -> dict:
  """The manifest of the checkpoint at ``path``; CheckpointError if unusable."""
  path = fs.resolve(path)
  recreate = recreate or _guess_recreate(path, 'transformer')
  if not fs.isdir(path):
    raise _fail(path, 'no such directory', recreate)
  file = fs.join(path, MANIFEST)
  if not fs.isfile(file):
    raise _fail(path, f'no {MANIFEST} (an interrupted save?)', recreate)
  try:
    manifest = json.loads(fs.read_text(file))
  except (OSError, ValueError) as e:
    raise _fail(path, f'unreadable {MANIFEST} ({_first_line(e)})', recreate) from None
  if not isinstance(manifest, dict) or not isinstance(manifest.get('parts'), list):
    raise _fail(path, f'{MANIFEST} has no list of parts', recreate)
  return manifest


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    '/'.join(str(getattr(k, 'key', k)) for k in keypath): tuple(leaf.shape)
    for keypath, leaf in leaves
  }


def _config_diff(saved: Mapping | None, current: Mapping | None) -> str:
  """Shape-relevant config values that differ, e.g. 'model.d_model 256 != 128'."""
  if not saved or not current:
    return ''
  # JSON turns tuples into lists: compare both sides in that form.
  saved, current = (json.loads(json.dumps(x, default=str)) for x in (saved, current))
  diffs = []
  for section in ('image_size', 'scales', 'tokenizer', 'model'):
    a, b = saved.get(section), current.get(section)
    if isinstance(a, dict) and isinstance(b, dict):
      for k in sorted(set(a) | set(b)):
        if 'dtype' not in k and k != 'checkpoint' and a.get(k) != b.get(k):
          diffs.append(f'{section}.{k}: checkpoint {a.get(k)} vs config {b.get(k)}')
    elif a != b:
      diffs.append(f'{section}: checkpoint {a} vs config {b}')
  return f' (config differs: {"; ".join(diffs[:3])})' if diffs else ''


def _check_structure(saved: dict, wanted: dict) -> str | None:
  """A description of the first structural or shape difference, or None."""
  missing = sorted(set(wanted) - set(saved))
  if missing:
    return f'parameter {missing[0]} is missing ({len(missing)} missing in all)'
  extra = sorted(set(saved) - set(wanted))
  if extra:
    return f'parameter {extra[0]} is not in this model ({len(extra)} extra in all)'
  for name, shape in wanted.items():
    if saved[name] != shape:
      return (
        f'parameter {name} has shape {saved[name]} in the checkpoint but the '
        f'config needs {shape}'
      )
  return None


def load_params(
  path: str,
  model,
  parts: Sequence[str] = PARTS,
  *,
  recreate: str | None = None,
  config: Mapping | None = None,
  shardings: Mapping | None = None,
) -> dict:
  """Restores ``{part: params}`` for ``parts`` onto the model's abstract params.

  Args:
    path: a checkpoint directory written by `save_params`.
    model: a `NextScaleModel` built from the current config; its abstract
      parameters fix the expected structure, shapes and dtypes.
    parts: which of PARTS to load.
    recreate: the command shown in errors; default: the manifest's
      ``command``, else the pretraining command for the failing part.
    config: the current config as a dict; mismatch errors then name the
      config values that differ from the checkpoint's.
    shardings: ``{part: tree of jax.sharding.Sharding}`` (e.g.
      `parallel.param_shardings` of the run's mesh): each process then reads
      only its own shards, straight into place, whatever mesh wrote the
      checkpoint. Default: whole arrays on the first local device.

  Raises:
    CheckpointError: one line naming ``path`` and the recreate command.
  """
  path = fs.resolve(path)
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise ValueError(f'load_params: unknown parts {unknown}; expected some of {PARTS}')
  last = parts[-1] if parts else 'transformer'
  manifest = read_manifest(path, recreate or _guess_recreate(path, last))
  command = recreate or manifest.get('command') or _guess_recreate(path, last)
  abstract = nn.unbox(
    jax.eval_shape(
      functools.partial(model.init_boxed, parts=tuple(parts)), jax.random.key(0)
    )
  )
  # Restore onto explicit shardings: a checkpoint written on another
  # topology (a GPU, a pod slice) then loads anywhere, and a model too big
  # for one device is never gathered whole.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = {
    part: jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract[part],
      shardings[part]
      if shardings is not None
      else jax.tree.map(lambda _: device, abstract[part]),
    )
    for part in parts
  }
  from varrl_jax.rl import lora_io  # it imports this module

  if lora_io.is_separate_lora(manifest, parts):
    return lora_io.load_separate_lora(path, model, parts, manifest, config, shardings)
  hint = _config_diff(manifest.get('config'), config)
  out, error = {}, None
  # Errors are raised after the checkpointer is closed: raising inside the
  # block leaves orbax's event loop to be torn down by the garbage collector.
  with ocp.StandardCheckpointer() as ckptr:
    for part in parts:
      directory = fs.join(path, part)
      if part not in manifest['parts'] or not fs.isdir(directory):
        saved = ', '.join(manifest['parts']) or 'none'
        cmd = recreate or _guess_recreate(path, part)
        error = _fail(path, f'holds no {part} parameters (saved parts: {saved})', cmd)
        break
      try:
        meta = ckptr.metadata(directory).item_metadata
        saved_shapes = _flat_shapes(getattr(meta, 'tree', meta))
        problem = _check_structure(saved_shapes, _flat_shapes(abstract[part]))
        if problem:
          error = _fail(path, f'{part}: {problem}{hint}', command)
          break
        out[part] = ckptr.restore(directory, abstract[part])
      except Exception as e:  # orbax/tensorstore raise many types on bad files
        error = _fail(path, f'{part}: unreadable ({_first_line(e)})', command)
        break
  if error is not None:
    raise error
  return out


def __getattr__(name: str):
  # The train-state names, re-exported lazily (train_checkpoints imports
  # this module).
  if name in ('TrainCheckpoints', 'fingerprint', 'FINGERPRINT_VERSION'):
    from varrl_jax import train_checkpoints

    return getattr(train_checkpoints, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
