r"""What an AOT-compiled TPU program says: HBM fit, roofline and MFU bound.

`varrl_jax.aot` compiles the RL programs for a slice; this reads each one.
Per chip, with FLOPs_hw the hardware's FLOPs (the larger of XLA's count and
the model's, rematerialised forwards included), FLOPs_model the model's
(`models.flops`, no recomputation), B the HBM bytes XLA counts and B_ici the
bytes the program's collectives move (read from its HLO):

    t_compute = FLOPs_hw / peak           (bf16 spec peak)
    t_memory  = B / HBM bandwidth
    t_ici     = B_ici / ICI bandwidth
    roofline  = max(t_compute, t_memory, t_ici)     the term that bounds it
    MFU bound = FLOPs_model / (roofline x peak)

XLA counts the body of a loop (the scan over layers) once, for FLOPs and
bytes alike; the collectives' bytes here multiply a while loop's body by its
known trip count. B is a lower bound, and the ICI term assumes every link of
the chip busy, so the roofline is optimistic and the MFU bound an upper
bound. A GRPO step with ``model.remat`` runs one forward more than the math
needs, so at best its MFU is 3/4 of the compute roofline's.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

GIB = 2**30


@dataclasses.dataclass
class Fit:
  name: str
  hbm_gib: float
  capacity_gib: float

  @property
  def ok(self) -> bool:
    return self.hbm_gib <= self.capacity_gib


def xla_cost(compiled) -> tuple[float, float]:
  """(FLOPs, bytes accessed) per chip from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))


# -- collectives ---------------------------------------------------------------

_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1}
_DTYPE_BYTES.update({k: 2 for k in ('bf16', 'f16', 's16', 'u16')})
_DTYPE_BYTES.update({k: 4 for k in ('f32', 's32', 'u32')})
_DTYPE_BYTES.update({k: 8 for k in ('f64', 's64', 'u64', 'c64')})
_COLLECTIVE = re.compile(
  r'^\s*(?:ROOT )?%\S+ = (.+?) '
  r'(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)'
  r'(-done)?\(.*'
)
_SHAPE = re.compile(r'([a-z0-9]+)\[([0-9,]*)\]')


def _shape_bytes(text: str) -> int:
  """Bytes of every array shape in ``text`` (a shape or a tuple of shapes)."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    size = int(np.prod([int(d) for d in dims.split(',') if d])) if dims else 1
    total += size * _DTYPE_BYTES.get(dtype, 4)
  return total


def _group_size(line: str, num_devices: int) -> int:
  """Devices in one replica group of a collective (3 HLO spellings)."""
  m = re.search(r'replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}', line)
  if m:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    named = re.findall(r"'(\w+)'", m.group(2))
    return int(np.prod([int(sizes[a]) for a in named])) if named else 1
  m = re.search(r'replica_groups=\[(\d+),(\d+)\]<=', line)
  if m:
    return int(m.group(2))
  m = re.search(r'replica_groups=\{\{([^}]*)\}', line)
  if m:
    return len(m.group(1).split(','))
  return num_devices


def _moved_bytes(op: str, out_bytes: int, n: int) -> float:
  """Bytes a chip sends for one collective whose result is ``out_bytes`` over a
  group of n (ring algorithms): all-gather receives the n - 1 other shards,
  reduce-scatter sends n - 1 shards of its result's size, all-reduce both."""
  if n <= 1:
    return 0.0
  return {
    'all-gather': out_bytes * (n - 1) / n,
    'reduce-scatter': out_bytes * (n - 1),
    'all-reduce': 2 * out_bytes * (n - 1) / n,
    'all-to-all': out_bytes * (n - 1) / n,
    'collective-permute': out_bytes,
  }[op]


def collective_bytes(hlo_text: str, num_devices: int) -> float:
  """Bytes per chip that the collectives of a compiled module move.

  Sums `_moved_bytes` over the module's collectives (an async pair counted by
  its ``-done``), descending into the computations each instruction calls,
  a while loop's body times its known trip count.
  """
  comps: dict[str, list[str]] = {}
  entry, name = None, None
  for line in hlo_text.splitlines():
    head = re.match(r'^(ENTRY )?%(\S+) .*\{\s*$', line)
    if head:
      name = head.group(2)
      comps[name] = []
      entry = name if head.group(1) else entry
    elif name is not None and line.strip() == '}':
      name = None
    elif name is not None:
      comps[name].append(line)

  memo: dict[str, float] = {}

  def total(comp: str) -> float:
    if comp in memo:
      return memo[comp]
    memo[comp] = 0.0  # no recursion through cycles
    acc = 0.0
    lines = comps.get(comp, ())
    by_name = {ln.split(' = ', 1)[0].split()[-1]: ln for ln in lines if ' = ' in ln}
    for line in lines:
      m = _COLLECTIVE.match(line)
      if m:  # a -start (a tuple of operand and result) is not matched
        out = _shape_bytes(m.group(1))
        # A -done's replica groups are on its -start, its operand.
        start = re.search(r'-done\((%[^\s,)]+)', line) if m.group(3) else None
        where = by_name.get(start.group(1), line) if start else line
        acc += _moved_bytes(m.group(2), out, _group_size(where, num_devices))
      body = re.search(r'body=%(\S+?)[,\s]', line)
      if body:
        trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        acc += (int(trip.group(1)) if trip else 1) * total(body.group(1))
      if re.search(r' async-(?:done|update)\(', line):
        continue  # its computation is counted once, at the async-start
      for called in re.findall(r'(?:calls|branch_computations)=\{?%([^\s,}]+)', line):
        acc += total(called)
    memo[comp] = acc
    return acc

  return total(entry) if entry else 0.0


# -- roofline -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Roofline:
  """Per-chip work of one program and its roofline (see the module docstring)."""

  flops: float  # hardware: max(XLA, model with recomputation)
  model_flops: float  # the model's, no recomputation
  hbm_bytes: float
  ici_bytes: float
  peak_flops: float  # FLOP/s
  hbm_bw: float  # bytes/s
  ici_bw: float  # bytes/s

  @property
  def terms(self) -> dict[str, float]:
    return {
      'compute': self.flops / self.peak_flops,
      'HBM bandwidth': self.hbm_bytes / self.hbm_bw,
      'ICI bandwidth': self.ici_bytes / self.ici_bw if self.ici_bw else 0.0,
    }

  @property
  def seconds(self) -> float:
    return max(self.terms.values())

  @property
  def bound(self) -> str:
    return max(self.terms.items(), key=lambda kv: kv[1])[0]

  @property
  def mfu_bound(self) -> float:
    return self.model_flops / (self.seconds * self.peak_flops)


def roofline(program, chip, num_devices: int) -> Roofline:
  """The `Roofline` of a compiled `aot.Program` on ``chip``."""
  flops, nbytes = xla_cost(program.compiled)
  return Roofline(
    flops=max(flops, program.model_flops),
    model_flops=program.mfu_flops or program.model_flops,
    hbm_bytes=nbytes,
    ici_bytes=collective_bytes(program.compiled.as_text(), num_devices),
    peak_flops=chip.peak_tflops * 1e12,
    hbm_bw=chip.hbm_gbps * 1e9,
    ici_bw=chip.ici_gbps * 1e9,
  )


def update_mfu_bound(program, step: Roofline) -> tuple[float, float]:
  """(MFU bound, roofline seconds) of one RL update: the reference forward
  (``program.forward_flops`` per chip, at the step's roofline seconds per
  hardware FLOP: it is not compiled here) and ``program.inner_updates``
  steps."""
  t_ref = program.forward_flops * step.seconds / step.flops
  seconds = t_ref + program.inner_updates * step.seconds
  model = program.forward_flops + program.inner_updates * step.model_flops
  return model / (seconds * step.peak_flops), seconds


# -- the table -------------------------------------------------------------------


def report(program, chip, mesh, topology: str, axes) -> Fit:
  """Prints the program's table (``axes``: the mesh axes, in order); returns
  its fit."""
  shape = ' x '.join(f'{a} {mesh.shape[a]}' for a in axes)
  print(f'== {program.name}: {program.what}')
  print(f'  {"mesh":<18} {shape} over {mesh.size} {chip.name} chips ({topology})')
  if program.compiled is None:
    print(f'  {"compile":<18} refused after {program.seconds:.1f} s: {program.error}')
    need = re.search(r'temporaries \(([\d.]+)G\)', program.error)
    return Fit(program.name, float(need.group(1)) if need else math.inf, chip.hbm_gib)
  m = program.compiled.memory_analysis()
  arg, out = m.argument_size_in_bytes, m.output_size_in_bytes
  temp, code = m.temp_size_in_bytes, m.generated_code_size_in_bytes
  alias = m.alias_size_in_bytes
  total = arg + out + temp + code - alias
  hbm = (total + program.resident) / GIB
  xla_flops, _ = xla_cost(program.compiled)
  r = roofline(program, chip, mesh.size)
  t = r.terms
  rows = [
    ('argument', f'{arg / GIB:.2f} GiB'),
    ('output', f'{out / GIB:.2f} GiB'),
    ('temp', f'{temp / GIB:.2f} GiB'),
    ('generated code', f'{code / GIB:.3f} GiB'),
    ('aliased (donated)', f'-{alias / GIB:.2f} GiB'),
    ('total', f'{total / GIB:.2f} GiB'),
    ('resident besides', f'{program.resident / GIB:.2f} GiB ({program.resident_what})'),
    (
      'HBM per chip',
      f'{hbm:.2f} of {chip.hbm_gib:.1f} GiB ({100 * hbm / chip.hbm_gib:.0f}%)',
    ),
    (
      'FLOPs per chip',
      f'{xla_flops:.3e} (XLA), {program.model_flops:.3e} (model'
      f'{", with remat" if r.model_flops != program.model_flops else ""})',
    ),
    ('bytes per chip', f'{r.hbm_bytes:.3e} (XLA), {r.ici_bytes:.3e} (collectives)'),
    (
      'roofline time',
      f'{r.seconds:.3g} s ({r.bound}-bound at {chip.peak_tflops:g} TFLOP/s, '
      f'{chip.hbm_gbps:g} GB/s HBM, {chip.ici_gbps:g} GB/s ICI: compute '
      f'{t["compute"]:.3g} s, HBM {t["HBM bandwidth"]:.3g} s, ICI '
      f'{t["ICI bandwidth"]:.3g} s)',
    ),
    (
      'MFU bound',
      f'{r.mfu_bound:.2f} (model {r.model_flops:.3e} FLOPs / (roofline x peak); '
      f'{r.bound}-bound)',
    ),
  ]
  if program.inner_updates:
    mfu, seconds = update_mfu_bound(program, r)
    rows.append(
      (
        'RL update bound',
        f'{mfu:.2f} MFU, {seconds:.3g} s (reference forward + '
        f'{program.inner_updates} step(s))',
      )
    )
  rows.append(('compile time', f'{program.seconds:.1f} s'))
  for k, v in rows:
    print(f'  {k:<18} {v}')
  return Fit(program.name, hbm, chip.hbm_gib)
