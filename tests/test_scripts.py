"""scripts/compare.sh end to end at tiny scale, and the augmentation grid."""
import json
import os
import subprocess
import sys

from conftest import DATA_DIR, DATASET, ROOT


def test_compare_runs_every_stage_and_writes_the_report(tmp_path):
  workdir = tmp_path / 'cmp'
  proc = subprocess.run(
      ['bash', os.path.join(ROOT, 'scripts', 'compare.sh'), f'--workdir={workdir}', '--pretrain_epochs=1',
       '--epochs=1', '--batch_size=64', '--set', f'dataset={DATASET}', '--set', f'data_dir={DATA_DIR}',
       '--set', 'train_limit=512', '--set', 'width=0.125', '--set', 'dtype=float32',
       '--set', 'eval_batch_size=1000'],
      cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = (workdir / 'report.md').read_text()
  for method in ('supervised', 'finetune', 'linear_eval'):
    row = next(l for l in report.splitlines() if l.startswith(f'| {method} |'))
    assert row.count('(best') == 3, row
    for fraction in ('1', '0.1', '0.01'):
      r = json.loads((workdir / f'{method}_{fraction}' / 'results.json').read_text())
      assert r['label_fraction'] == float(fraction) and 0 <= r['test_top1'] <= 1
      assert f"{100 * r['test_top1']:.1f}" in row
  for name in ('accuracy_1.png', 'accuracy_0.1.png', 'accuracy_0.01.png'):
    assert (workdir / name).read_bytes()[:4] == b'\x89PNG'
  assert json.loads((workdir / 'pretrain' / 'results.json').read_text())['knn_top1'] is not None


def test_show_augmentations_writes_a_png(tmp_path):
  out = tmp_path / 'grid.png'
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'show_augmentations.py'),
                         f'--out={out}', f'--dataset={DATASET}', f'--data_dir={DATA_DIR}', '--num=4'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert out.read_bytes()[:4] == b'\x89PNG' and out.stat().st_size > 5000
