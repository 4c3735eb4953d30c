"""scripts/gpu_report.py --tiny: the GPU report's whole path on the CPU at tiny sizes, with a stand-in
for the PyTorch reference (the real one needs torch and torchvision; its figures come from the GPU
run), and its per-part time limits."""
import json
import os
import subprocess
import sys

import pytest

from conftest import DATA_DIR, ROOT

FAKE_REFERENCE = '''
import json, sys
args = sys.argv[1:]
assert args[0] == 'bench' and '--amp' in args
pipeline = args[args.index('--pipeline') + 1]
print(json.dumps({"images_per_s": 512.0 if pipeline == 'cpu' else 1000.0, "step_ms": 1.0}))
'''


@pytest.mark.e2e
@pytest.mark.slow
def test_the_tiny_report_has_every_part(tmp_path):
  ref = tmp_path / 'fake_reference.py'
  ref.write_text(FAKE_REFERENCE)
  out = tmp_path / 'out'
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'gpu_report.py'), str(out), '--tiny',
                         f'--data_dir={DATA_DIR}', f'--reference={ref}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  parts = {p: json.loads((out / f'{p}.json').read_text())
           for p in ('environment', 'costs', 'benchmark', 'breakdown', 'vit', 'memory', 'accuracy')}
  assert all(p['status'] == 'done' for p in parts.values()), {k: v['status'] for k, v in parts.items()}
  bench = parts['benchmark']['figures']
  row = bench['steps'][0]
  assert row['images_per_s'] > 0 and row['compile_s'] > 0 and bench['cold_load_s'] > bench['warm_load_s']
  assert abs(row['x_torch_pipeline'] - row['images_per_s'] / 512.0) < 1e-9
  assert abs(row['x_torch_ceiling'] - row['images_per_s'] / 1000.0) < 1e-9
  assert bench['stream']['step']['images_per_s'] > 0 and bench['stream']['pipeline'][0]['per_worker'] > 0
  costs = parts['costs']['figures']
  assert costs['model_forward_backward']['flops'] > costs['augmentation']['flops'] > 0 and costs['step_kernels'] > 10
  brk = parts['breakdown']['figures']['ms']
  assert all(brk[k] >= 0 for k in ('augmentation', 'forward', 'backward', 'nt_xent', 'optimiser_update', 'idle_gaps'))
  assert brk['forward'] > 0 and brk['augmentation'] > 0
  vit = parts['vit']['figures']
  assert vit['model'] == 'vit_nano' and vit['steps'][0]['images_per_s'] > 0
  rows = {(r['chunks'], r['remat']): r for r in parts['memory']['figures']['memory']}  # batch 64
  assert sorted(rows) == [(1, False), (4, False)], rows
  assert all(r['images_per_s'] > 0 and r['memory']['peak'] > 0 for r in rows.values())
  assert rows[4, False]['memory']['temp'] < rows[1, False]['memory']['temp'] and rows[1, False]['update_difference'] == 0
  acc = parts['accuracy']['figures']
  assert acc['epochs'] == 1 and 0 < acc['knn_top1'] < 1 and 0 < acc['linear_top1'] < 1
  report = (out / 'report.md').read_text()
  for fragment in ('## Speed', 'x torch pipeline', "## Where the step's time goes", '| augmentation |',
                   '| idle_gaps |', '## Cost analysis', 'kernels', '## Accuracy', 'kNN top-1', 'Versions: ',
                   'jax ', '| accuracy | done |', 'streamed path', '## Speed on a Vision Transformer', '| vit | done |',
                   '## Large batches on small memory', '| memory | done |'):
    assert fragment in report, fragment


def test_a_part_that_runs_out_of_time_leaves_the_others_and_says_so(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, 'scripts'))
  import gpu_report

  def slow(limit):
    raise gpu_report.PartTimeout('stopped after 3 of 10 epochs', {'epochs_done': 3})

  report = gpu_report.Report(str(tmp_path))
  report.run('first', 10, lambda limit: {'x': 1})
  report.run('second', 5, slow)
  report.run('third', 10, lambda limit: 1 / 0)
  statuses = {k: json.loads((tmp_path / f'{k}.json').read_text())['status'] for k in ('first', 'second', 'third')}
  assert statuses['first'] == 'done'
  assert statuses['second'] == 'ran out of time (5 s): stopped after 3 of 10 epochs'
  assert statuses['third'].startswith('failed: ZeroDivisionError')
  assert json.loads((tmp_path / 'second.json').read_text())['figures'] == {'epochs_done': 3}
