"""scripts/benchmark.py at CPU size, with a stand-in for the PyTorch reference to check the plumbing
(the real reference needs torch and torchvision; its figures come from the GPU run)."""
import json
import os
import subprocess
import sys

from conftest import DATA_DIR, DATASET, ROOT

FAKE_REFERENCE = '''
import json, sys
args = sys.argv[1:]
if args[0] == 'train':
    print(json.dumps({"s_per_epoch": 2.0, "knn_top1": 0.1, "epochs": 1}))
else:
    print(json.dumps({"images_per_s": 1000.0, "step_ms": 1.0}))
'''


def test_benchmark_runs_on_cpu_and_reports_ratios(tmp_path):
  ref = tmp_path / 'fake_reference.py'
  ref.write_text(FAKE_REFERENCE)
  out = tmp_path / 'bench.json'
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'benchmark.py'), '--tiny',
                         f'--dataset={DATASET}', f'--data_dir={DATA_DIR}', f'--out={out}',
                         f'--reference={ref}', '--reference_limit=1024'],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  row = result['steps'][0]
  assert row['images_per_s'] > 0 and len(row['windows']) == 2 and row['compile_s'] > 0
  assert row['no_augment_images_per_s'] > 0
  assert result['cold_load_s'] > result['warm_load_s'] and result['knn_s'] > 0
  assert result['reference']['pipeline']['images_per_s'] == 512.0  # 1024 images in 2 s
  assert abs(row['x_torch_pipeline'] - row['images_per_s'] / 512.0) < 1e-9
  assert abs(row['x_torch_ceiling'] - row['images_per_s'] / 1000.0) < 1e-9
  table = proc.stdout.strip().splitlines()
  assert table[-1].startswith('| 64 | float32 |'), table[-3:]
  assert 'x torch pipeline' in table[-3] and table[-2].startswith('|---'), table[-3:]
