r"""Export a pretrained model as a small, shippable checkpoint.

  python -m varrl_jax.export --config=configs/tiny.py \
      --source=workdir/pretrain/transformer/checkpoints/final \
      --dest=varrl_jax/assets/tiny --dtype=bfloat16

Reads a tokenizer + transformer checkpoint written by the pretraining stages,
casts every floating-point array to ``--dtype`` (bfloat16 halves the size;
loading casts back to the config's ``param_dtype``) and writes it to
``--dest`` with a manifest that keeps the source run's record (config, data
seed, step, metrics) and adds ``recreate``: the commands that rebuild it from
nothing. ``--quality=NAME=metrics.json`` (repeatable) records evaluator
results (``python -m varrl_jax.evaluate ... --workdir=DIR`` writes
``DIR/metrics.json``) under ``quality.NAME``.

``--tokenizer=CKPT`` takes the tokenizer from another checkpoint: one whose
decoder was fine-tuned (``pretrain --stage=tokenizer
--config.pretrain.tokenizer.trainable=decoder``). Everything that decides
the token ids (encoder, codebook, phi convolutions) must equal the source's
bit for bit, so the transformer sees the ids it was trained on; anything
else is refused with the first differing parameter named.

An RL run with LoRA (``config.rl.lora.rank > 0``) saves the merged params
and its adapters. ``--lora=merged`` (default) exports the merged params
(base + (alpha / r) A B folded in): the same format as any other export.
``--lora=separate`` writes the adapters alone (part ``lora``, cast to
``--dtype``) and a manifest naming the base checkpoint (the run's
``config.init_checkpoint``) with its fingerprint; `checkpoint.load_params`
merges them on load, so it loads like any checkpoint while the base exists
unchanged.

The shipped ``varrl_jax/assets/tiny`` checkpoint, which ``configs/tiny.py``
loads by default, was made this way; its manifest says exactly how.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from varrl_jax import checkpoint, cli
from varrl_jax.models.family import build_model
from varrl_jax.rl import lora_io

# Flags are defined only when run as a program: importing this module (the
# tests do) next to another CLI module must not define --config twice.
_CONFIG = None
_SOURCE = None
_DEST = None
_DTYPE = None
_QUALITY = None
_TOKENIZER = None
_LORA = None

LORA_MODES = ('merged', 'separate')


def _define_flags():
  global _CONFIG, _SOURCE, _DEST, _DTYPE, _QUALITY, _TOKENIZER, _LORA
  _CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file of the model.', lock_config=True
  )
  _SOURCE = flags.DEFINE_string('source', None, 'Checkpoint to export.')
  _DEST = flags.DEFINE_string('dest', None, 'Output checkpoint directory.')
  _DTYPE = flags.DEFINE_enum(
    'dtype', 'bfloat16', ['bfloat16', 'float32'], 'Stored floating-point dtype.'
  )
  _QUALITY = flags.DEFINE_multi_string(
    'quality', [], 'NAME=path/to/metrics.json of an evaluator run to record.'
  )
  _TOKENIZER = flags.DEFINE_string(
    'tokenizer',
    '',
    "Checkpoint whose tokenizer replaces the source's (a decoder fine-tune; "
    'the ids it produces must be the same).',
  )
  _LORA = flags.DEFINE_enum(
    'lora',
    'merged',
    list(LORA_MODES),
    'LoRA runs: the merged params, or the adapters alone plus the base path.',
  )


def cast_floats(tree, dtype):
  """Casts floating-point leaves to ``dtype``; integer leaves are kept."""
  return jax.tree.map(
    lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
  )


def read_quality(specs: list[str]) -> dict:
  """``['NAME=metrics.json', ...]`` -> ``{NAME: summary}`` (see module doc)."""
  out = {}
  for spec in specs:
    name, sep, path = spec.partition('=')
    if not sep or not name or not path:
      raise ValueError(f'--quality expects NAME=path/to/metrics.json, got {spec!r}')
    try:
      with open(path) as f:
        summary = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f'--quality {name}: cannot read {path}: {e}') from None
    keep = ('data', 'source', 'num_prompts', 'sampling', 'seed', 'metrics')
    out[name] = {k: summary[k] for k in keep if k in summary}
  return out


def id_changes(old_tok, new_tok) -> list[str]:
  """Paths of the tokenizer parameters outside the decoder that differ.

  Those parameters (encoder, codebook, phi convolutions) decide the token
  ids; an empty list means both tokenizers give every image the same ids.
  """
  old = dict(jax.tree_util.tree_flatten_with_path(old_tok)[0])
  changed = []
  for path, new in jax.tree_util.tree_flatten_with_path(new_tok)[0]:
    name = jax.tree_util.keystr(path)
    if "['decoder']" in name:
      continue
    if path not in old or not np.array_equal(np.asarray(old[path]), np.asarray(new)):
      changed.append(name)
  return changed


def _recipe(manifest: dict) -> list[str]:
  return manifest.get('recipe') or [
    manifest.get('tokenizer_manifest', {}).get('command'),
    manifest.get('command'),
  ]


def export(
  config,
  source: str,
  dest: str,
  dtype: str,
  quality: dict,
  command: str,
  tokenizer: str = '',
  lora: str = 'merged',
):
  """Writes the cast copy of ``source`` to ``dest``; returns its manifest.

  ``lora``: 'merged' or 'separate' (module docstring).

  Raises:
    checkpoint.CheckpointError: a checkpoint is unusable, or ``tokenizer``
      would give other token ids than the source's tokenizer.
  """
  model = build_model(config)
  manifest = checkpoint.read_manifest(source)
  if lora not in LORA_MODES:
    raise ValueError(f'--lora must be one of {LORA_MODES}, got {lora!r}')
  if lora == 'separate':
    if tokenizer:
      raise ValueError('--lora=separate exports adapters only; drop --tokenizer')
    return _export_adapters(model, source, manifest, dest, dtype, quality, command)
  params = checkpoint.load_params(source, model, config=config.to_dict())
  recreate = list(_recipe(manifest))
  extra = {}
  if tokenizer:
    tok_manifest = checkpoint.read_manifest(tokenizer)
    new_tok = checkpoint.load_params(
      tokenizer, model, ('tokenizer',), config=config.to_dict()
    )['tokenizer']
    changed = id_changes(params['tokenizer'], new_tok)
    if changed:
      raise checkpoint.CheckpointError(
        f'--tokenizer={tokenizer}: its tokenizer gives other token ids than the one '
        f'in {source} ({len(changed)} parameters outside the decoder differ, first '
        f'{changed[0]}); only a decoder fine-tune (pretrain.tokenizer.trainable='
        "'decoder') of the source's tokenizer can be swapped in"
      )
    params = {**params, 'tokenizer': new_tok}
    recreate += [c for c in _recipe(tok_manifest) if c not in recreate]
    extra = {
      'decoder_from': os.path.abspath(tokenizer),
      'decoder_manifest': {
        k: tok_manifest.get(k) for k in ('command', 'step', 'metrics', 'data_seed')
      },
    }
  params = cast_floats(params, jnp.dtype(dtype))
  recreate = [*recreate, command]
  record = {
    **{k: v for k, v in manifest.items() if k not in ('format', 'parts', 'saved_at')},
    **extra,
    'exported_from': os.path.abspath(source),
    'stored_dtype': dtype,
    'recreate': [c for c in recreate if c],
    'quality': quality,
  }
  if record.get('lora'):  # a LoRA run's merged params: say so
    record['lora'] = dict(record['lora'], merged=True)
  # Errors for a broken copy show the whole recipe, not just the last step.
  record['command'] = ' && '.join(record['recreate'])
  checkpoint.save_params(dest, params, record)
  return record


def _export_adapters(model, source, manifest, dest, dtype, quality, command) -> dict:
  """``--lora=separate``: the adapters of ``source`` and a reference to its base."""
  from varrl_jax.rl import lora as lora_lib

  rec = manifest.get('lora')
  if not rec:
    raise checkpoint.CheckpointError(
      f'--lora=separate: {source} holds no LoRA adapters (its run had '
      'config.rl.lora.rank=0)'
    )
  if not rec.get('base'):
    raise checkpoint.CheckpointError(
      f'--lora=separate: {source} was trained from a random init, so there is no '
      'base checkpoint to refer to; export it with --lora=merged'
    )
  spec = lora_lib.for_model(model, rec['rank'], rec['alpha'], rec['targets'])
  adapters = cast_floats(lora_io.load_adapters(source, spec), jnp.dtype(dtype))
  recreate = [*_recipe(manifest), command]
  record = {
    **{k: v for k, v in manifest.items() if k not in ('format', 'parts', 'saved_at')},
    'exported_from': os.path.abspath(source),
    'stored_dtype': dtype,
    'recreate': [c for c in recreate if c],
    'quality': quality,
  }
  record['command'] = ' && '.join(record['recreate'])
  checkpoint.save_params(dest, {checkpoint.LORA_PART: adapters}, record)
  return record


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  command = shlex.join(['python', '-m', 'varrl_jax.export', *sys.argv[1:]])
  record = cli.run_reporting_errors(
    export,
    _CONFIG.value,
    _SOURCE.value,
    _DEST.value,
    _DTYPE.value,
    read_quality(_QUALITY.value),
    command,
    _TOKENIZER.value,
    _LORA.value,
  )
  size = sum(
    os.path.getsize(os.path.join(d, f))
    for d, _, files in os.walk(_DEST.value)
    for f in files
  )
  print(f'exported {_SOURCE.value} -> {_DEST.value} ({size / 2**20:.1f} MiB)')
  print('recreate with:\n  ' + '\n  '.join(record['recreate']))


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config', 'source', 'dest'])
  app.run(main, flags_parser=cli.parse_flags)
