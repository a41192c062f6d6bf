"""Ahead-of-time TPU compile from this CPU host (`varrl_jax.aot`).

The compile test needs libtpu (the ``test`` extra installs it); without it,
it is skipped with that reason.
"""

import dataclasses
import importlib.util
import os
import re
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varrl_jax import aot, aot_report
from varrl_jax.models import flops
from varrl_jax.models.family import build_model
from varrl_jax.parallel import MESH_AXES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None


def _run(*args, timeout=1200):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
    [sys.executable, '-m', 'varrl_jax.aot', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.parametrize(
  'name, expected',
  [
    ('v5p-128', ('v5p', 'v5p:4x4x4')),
    ('v5p-8', ('v5p', 'v5p:2x2x1')),
    ('v5e-16', ('v5e', 'v5e:4x4')),
    ('v6e-64', ('v6e', 'v6e:8x8')),
    ('v5p:2x2x2', ('v5p', 'v5p:2x2x2')),
  ],
)
def test_topology_names(name, expected):
  assert aot.parse_topology(name) == expected


@pytest.mark.parametrize('name', ['v5p-7', 'v9x-8', 'tpu', 'v5e-3'])
def test_unknown_topology_is_an_error(name):
  with pytest.raises(aot.TopologyError, match='unknown --topology'):
    aot.parse_topology(name)


def test_missing_libtpu_names_the_extra(monkeypatch):
  monkeypatch.setattr(aot.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(aot.TopologyError, match=r'pip install -e "\.\[tpu\]"'):
    aot.tpu_devices('v5p-8')


def test_bad_topology_is_one_error_line():
  proc = _run('--config=configs/tiny.py', '--topology=v5p-7', timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(errors) == 1 and 'unknown --topology' in errors[0], proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_report_of_a_matmul_has_its_hand_counted_cost(capsys):
  """[16, 32] @ [32, 8] in float32 on the host: 2 x 16 x 32 x 8 = 8192 FLOPs,
  4 (512 + 256 + 128) = 3584 bytes read and written, no collective; a chip
  of 1 kFLOP/s and 1 kB/s makes the roofline the larger of 8.192 s and
  3.584 s, and a model count above XLA's (10^4) takes over the compute term
  (10 s, MFU bound 10^4 / (10 x 10^3) = 1)."""
  a, b = jnp.zeros((16, 32)), jnp.zeros((32, 8))
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)
  chip = aot.Chip('toy', 1.0, 1e-9, 1e-6, 1e-6)
  for model_flops, t, mfu in ((0.0, '8.19', '0.00'), (1e4, '10', '1.00')):
    program = aot.Program('mm', 'a matmul', compiled, '', 0, 'none', 0.0, model_flops)
    aot_report.report(program, chip, mesh, 'toy', MESH_AXES)
    out = capsys.readouterr().out
    assert f'FLOPs per chip     8.192e+03 (XLA), {model_flops:.3e} (model)' in out, out
    assert 'bytes per chip     3.584e+03 (XLA), 0.000e+00 (collectives)' in out, out
    assert f'roofline time      {t} s (compute-bound at 1e-09 TFLOP/s' in out, out
    assert f'MFU bound          {mfu} (model' in out, out
  program = aot.Program('mm', 'a matmul', compiled, '', 0, 'none', 0.0, 0.0)
  aot_report.report(
    program, aot.Chip('toy', 1.0, 1e-6, 1e-6, 1e-6), mesh, 'toy', MESH_AXES
  )
  assert 'roofline time      3.58 s (HBM bandwidth-bound' in capsys.readouterr().out


@pytest.mark.skipif(
  not HAS_LIBTPU, reason='libtpu not installed: pip install -e ".[tpu]"'
)
def test_tiny_compiles_for_v5p_8_with_splash_attention():
  """Both programs, with the splash kernel inside shard_map over a 4-chip mesh;
  no weights are loaded (the tiny config names a shipped checkpoint)."""
  proc = _run(
    '--config=configs/tiny.py',
    '--topology=v5p-8',
    '--config.model.attention=splash',
    '--config.mesh.data=2',
    '--config.mesh.fsdp=2',
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  lines = out.strip().splitlines()
  assert lines[-1].startswith('fit: yes (train_step '), lines[-1]
  # The model's count for the rows each program runs (32 sequences of the
  # train step, 8 images of one rollout chunk; no CFG rows), per chip.
  config = runpy.run_path(os.path.join(ROOT, 'configs', 'tiny.py'))['get_config']()
  dims = build_model(config).dims
  model_flops = {
    'train_step': flops.train_flops(dims, 32, dims.schedule.num_scales) / 4,
    'sample': flops.sample_flops(dims, 8) / 4,
  }
  # XLA's own count: the train step's within 15% (it does not see inside the
  # splash kernel, but counts norms, softmax and the optimizer); the
  # sampler's higher (it also counts the tokenizer's decoder), under 2x.
  xla_band = {'train_step': (0.85, 1.15), 'sample': (1.0, 2.0)}
  assert 'x 228 tokens' in out and 'one rollout chunk: 8 images, 4 scales' in out
  for program in ('train_step', 'sample'):
    table = out.split(f'== {program}:')[1].split('\n==')[0]
    assert 'data 2 x fsdp 2 x tensor 1 over 4 TPU v5p chips' in table
    gib = dict(re.findall(r'^  (\w[\w ()]*?) +(-?[\d.]+) GiB', table, re.M))
    gib = {k: float(v) for k, v in gib.items()}
    hbm = float(re.search(r'HBM per chip +([\d.]+) of 95\.0 GiB', table).group(1))
    # total = argument + output + temp + code - aliased; HBM adds the resident
    # buffers. Each figure is rounded on its own (to 0.01 GiB, the code 0.001).
    parts = ('argument', 'output', 'temp', 'generated code', 'aliased (donated)')
    assert abs(gib['total'] - sum(gib[k] for k in parts)) <= 0.0256, table
    assert abs(hbm - gib['total'] - gib['resident besides']) <= 0.0151, table
    assert 0 < gib['total'] < 1, table  # a tiny model: well under a GiB per chip
    m = re.search(r'FLOPs per chip +([\d.e+]+) \(XLA\), ([\d.e+]+) \(model\)', table)
    xla, model = float(m.group(1)), float(m.group(2))
    assert model == pytest.approx(model_flops[program], rel=1e-3), table
    lo, hi = xla_band[program]
    assert lo <= xla / model <= hi, (xla / model, table)
    # The roofline from the printed counts and v5p's spec sheet.
    m = re.search(r'bytes per chip +([\d.e+]+) \(XLA\), ([\d.e+]+) \(collec', table)
    terms = {
      'compute': max(xla, model) / 459e12,
      'HBM bandwidth': float(m.group(1)) / 2765e9,
      'ICI bandwidth': float(m.group(2)) / 600e9,
    }
    step = re.search(r'roofline time +([\d.e+-]+) s \(([\w ]+)-bound at 459', table)
    assert float(step.group(1)) == pytest.approx(max(terms.values()), rel=5e-3)
    assert step.group(2) == max(terms, key=terms.get), table
    mfu = float(re.search(r'MFU bound +([\d.]+) ', table).group(1))
    assert mfu == pytest.approx(model / max(terms.values()) / 459e12, abs=0.006)


@pytest.mark.skipif(
  not HAS_LIBTPU, reason='libtpu not installed: pip install -e ".[tpu]"'
)
def test_var_family_compiles_for_v5p_8():
  """The official VAR family (depth 2 of configs/var.py: the real schedule,
  VQ-VAE and vocabulary) through the same AOT path: both programs fit."""
  proc = _run(
    '--config=configs/var.py:2',
    '--topology=v5p-8',
    '--config.model.attention=splash',
    '--config.mesh.data=2',
    '--config.mesh.fsdp=2',
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[-1].startswith('fit: yes (train_step '), lines[-1]
  assert 'x 680 tokens' in proc.stdout  # no prompt prefix: image tokens only


@pytest.mark.skipif(
  not HAS_LIBTPU, reason='libtpu not installed: pip install -e ".[tpu]"'
)
def test_infinity_lora_micro_batched_step_compiles_alone():
  """The infinity family (configs/infinity_2b.py at 256^2, two of its 32
  layers: the real width, text and bit head) with LoRA and 2 micro-batches;
  ``--programs=train_step`` compiles the step only."""
  proc = _run(
    '--config=configs/infinity_2b.py:256',
    '--topology=v5p-8',
    '--programs=train_step',
    '--config.model.infinity.depth=2',
    '--config.rl.lora.rank=4',
    '--config.rl.train_microbatches=2',
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  assert 'x 521 tokens, LoRA rank 4, 4 micro-batches of 128 sequences' in out, out
  assert '== sample' not in out
  assert out.strip().splitlines()[-1].startswith('fit: yes (train_step '), out


# A module as the TPU compiler prints it, trimmed: a scanned body (trip
# count 3) with an all-gather, an all-reduce in the entry, and an async
# all-gather pair (only its -done is counted).
_HLO = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = f32[4,256]{1,0:T(8,128)} all-gather(%x), channel_id=1, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={0}
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %lt = pred[] compare(%a, %b), direction=LT
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %ar = bf16[1024]{0} all-reduce(%y), channel_id=2, replica_groups={{0,1},{2,3}}, to_apply=%add
  %s = (f32[16], f32[64]) all-gather-start(%z), channel_id=3, replica_groups=[2,4]<=[8], dimensions={0}
  ROOT %d = f32[64]{0} all-gather-done(%s)
}
"""


def test_collective_bytes_follow_groups_trip_counts_and_async_pairs():
  body = 3 * 4 * 256 * 4 * 3 / 4  # all-gather over 4 of a 4 KiB result, 3 trips
  entry = 2 * 1024 * 2 * 1 / 2 + 64 * 4 * 3 / 4  # all-reduce over 2, async over 4
  assert aot_report.collective_bytes(_HLO, 8) == body + entry


def test_roofline_names_the_bound_and_the_mfu_bound():
  r = aot_report.Roofline(
    flops=8.0, model_flops=6.0, hbm_bytes=1.0, ici_bytes=30.0,
    peak_flops=2.0, hbm_bw=1.0, ici_bw=6.0,
  )  # fmt: skip
  assert r.terms == {'compute': 4.0, 'HBM bandwidth': 1.0, 'ICI bandwidth': 5.0}
  assert (r.seconds, r.bound, r.mfu_bound) == (5.0, 'ICI bandwidth', 0.6)


def test_rl_update_flops_count_the_reference_forward_and_inner_steps():
  from varrl_jax import cli
  from varrl_jax.models.family import build_model

  config = cli.load_config_file(os.path.join(ROOT, 'configs/tiny.py'))
  dims = build_model(config).dims
  s = dims.schedule.num_scales
  f = flops.forward_flops(dims, s)
  assert flops.rl_update_flops(dims, 4, s, 2) == 4 * f * (1 + 2 * 3)
  remat = dataclasses.replace(dims, remat='full')
  assert flops.rl_update_flops(remat, 4, s, 2) == 4 * f * 7  # model FLOPs
  assert flops.rl_update_flops(remat, 4, s, 2, remat=True) == 4 * f * (1 + 2 * 4)
