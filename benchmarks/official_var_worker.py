"""A worker that runs the official FoundationVision/VAR sampler for
``benchmarks/sampling.py`` (their code, from a checkout path; nothing copied).

Started as ``PYTHON benchmarks/official_var_worker.py --var_repo=PATH`` with a
Python that has torch and their imports (huggingface_hub); it answers one JSON
line per JSON line on stdin:

- ``{"cmd": "init", "depth": 16, "out_dir": DIR, "seed": 0}``: builds their
  VQ-VAE + VAR with ``build_vae_var`` (their random init, seeded), saves both
  state_dicts under DIR (so the benchmark converts the very same weights into
  ours) -> ``{"vae": path, "var": path, "torch": version, "threads": n}``.
- ``{"cmd": "run", "labels": [...], "cfg": 4.0, "top_k": 900, "top_p": 0.95,
  "seed": 0}``: one ``autoregressive_infer_cfg`` call -> ``{"seconds": s}``.
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--var_repo', required=True)
  parser.add_argument('--threads', type=int, default=0)
  args = parser.parse_args()
  import torch

  if args.threads:
    torch.set_num_threads(args.threads)
  sys.path.insert(0, os.path.abspath(args.var_repo))
  from models import build_vae_var  # their package

  vae = var = None
  out = sys.stdout
  for line in sys.stdin:
    msg = json.loads(line)
    if msg['cmd'] == 'quit':
      break
    if msg['cmd'] == 'init':
      torch.manual_seed(msg.get('seed', 0))
      depth = int(msg['depth'])
      # Their constructors print: keep stdout for the protocol.
      with contextlib.redirect_stdout(sys.stderr):
        vae, var = build_vae_var(
          device='cpu',
          patch_nums=tuple(msg['patch_nums']),
          depth=depth,
          shared_aln=bool(msg.get('shared_aln', False)),
          flash_if_available=False,
          fused_if_available=False,
        )
      vae.eval()
      var.eval()
      os.makedirs(msg['out_dir'], exist_ok=True)
      paths = {
        'vae': os.path.join(msg['out_dir'], 'vae.pth'),
        'var': os.path.join(msg['out_dir'], f'var_d{depth}.pth'),
      }
      torch.save(vae.state_dict(), paths['vae'])
      torch.save(var.state_dict(), paths['var'])
      commit = subprocess.run(
        ['git', '-C', args.var_repo, 'rev-parse', 'HEAD'],
        capture_output=True,
        text=True,
      ).stdout.strip()
      reply = {**paths, 'torch': torch.__version__, 'threads': torch.get_num_threads()}
      reply['commit'] = commit
    elif msg['cmd'] == 'run':
      labels = torch.tensor(msg['labels'], dtype=torch.long)
      t0 = time.perf_counter()
      with torch.inference_mode():
        img = var.autoregressive_infer_cfg(
          B=len(labels),
          label_B=labels,
          g_seed=msg.get('seed', 0),
          cfg=msg['cfg'],
          top_k=msg['top_k'],
          top_p=msg['top_p'],
        )
      reply = {'seconds': time.perf_counter() - t0, 'shape': list(img.shape)}
    else:
      reply = {'error': f'unknown command {msg["cmd"]!r}'}
    out.write(json.dumps(reply) + '\n')
    out.flush()


if __name__ == '__main__':
  main()
