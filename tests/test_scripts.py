"""scripts/compare.sh end to end at tiny scale, and the augmentation grid."""
import json
import os
import subprocess
import sys

import pytest

from conftest import DATA_DIR, DATASET, ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_compare_runs_every_stage_and_writes_the_report(tmp_path):
  """compare.sh at one label fraction (all the labels, where the pretraining monitors have their
  rows): every stage, the report, its pictures. Each fraction's runs are the same stages at another
  label_fraction (tested in tests/stages), and the table of several fractions is tested below."""
  workdir = tmp_path / 'cmp'
  proc = subprocess.run(
      ['bash', os.path.join(ROOT, 'scripts', 'compare.sh'), f'--workdir={workdir}', '--pretrain_epochs=1',
       '--epochs=1', '--batch_size=64', '--set', f'dataset={DATASET}', '--set', f'data_dir={DATA_DIR}',
       '--set', 'train_limit=512', '--set', 'width=0.125', '--set', 'dtype=float32', '--set', 'model=resnet10',
       '--set', 'test_split=test[:1000]', '--set', 'eval_batch_size=1000', '--picture_points=300',
       '--fractions=1.0', '--finetune_from_head_layer=1', '--distill'],
      cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = (workdir / 'report.md').read_text()
  rows = {tuple(c.strip() for c in l.split('|')[1:3]): l for l in report.splitlines() if l.startswith('| ')}
  for method, label, protocol in (('supervised', 'supervised (from scratch)', 'trained'),
                                  ('finetune', 'finetune (SimCLR encoder)', 'trained'),
                                  ('linear_features', 'linear probe', 'features'),
                                  ('linear_augmented', 'linear probe', 'augmented'),
                                  ('finetune_head', 'finetune (from a projector layer)', 'trained'),
                                  ('distilled', 'distilled (student of the fine-tuned model)', 'trained')):
    row = rows[(label, protocol)]
    for fraction in ('1',):
      r = json.loads((workdir / f'{method}_{fraction}' / 'results.json').read_text())
      assert r['label_fraction'] == float(fraction) and 0 <= r['test_top1'] <= 1
      assert f"{100 * r['test_top1']:.1f}" in row
  for fraction in ('1',):  # each fraction's student learns that fraction's teacher
    student = json.loads((workdir / f'distilled_{fraction}' / 'results.json').read_text())
    assert student['teacher_from'] == str(workdir / f'finetune_head_{fraction}')
    assert student['teacher']['finetune_from_head_layer'] == 1 and student['train_examples'] == 512
    assert f'- distilled at {100 * float(fraction):g}% of labels: teacher finetune resnet10 width 0.125 from head layer 1' in report
  pre = json.loads((workdir / 'pretrain' / 'results.json').read_text())
  for key, label, protocol in (('knn_top1', 'kNN (k=200) (pretraining)', 'knn'),
                               ('online_linear_top1', 'online linear probe (pretraining)', 'online'),
                               ('linear_top1', 'linear probe on frozen features (pretraining)', 'features')):
    assert pre[key] is not None and f'{100 * pre[key]:.1f}' in rows[(label, protocol)], key
  for name in ('accuracy_1.png', 'embedding_map.png', 'retrieval.png'):
    assert (workdir / name).read_bytes()[:4] == b'\x89PNG', name
    assert f']({name})' in report
  assert rows[('stage', 'label fraction')] and '| finetune | 1 | 1 |' in report  # wall-clock table
  assert not any((workdir / f'finetune_{f}').exists() for f in ('0.1', '0.01'))  # only the fractions asked for


def test_show_augmentations_writes_a_png(tmp_path):
  out = tmp_path / 'grid.png'
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'show_augmentations.py'),
                         f'--out={out}', f'--dataset={DATASET}', f'--data_dir={DATA_DIR}', '--num=4'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert out.read_bytes()[:4] == b'\x89PNG' and out.stat().st_size > 5000


def test_the_report_table_names_each_figure_and_puts_the_pretraining_monitors_where_they_belong():
  from simclr_jax.report import comparison
  pre = {'knn_top1': 0.32, 'linear_top1': 0.38, 'protocols': {'knn_top1': 'knn', 'linear_top1': 'features'},
         'labels': {'knn_top1': 'kNN (k=200)', 'linear_top1': 'linear probe on frozen features'}}
  runs = {('finetune', 0.1): {'test_top1': 0.195, 'best_test_top1': 0.2, 'history': [{}]},
          ('linear_features', 0.01): {'test_top1': 0.212, 'history': []}}
  with_all = comparison.markdown_table(runs, pre, [1.0, 0.1, 0.01])
  assert '| kNN (k=200) (pretraining) | knn | 32.0 | - | - |' in with_all
  assert '| finetune (SimCLR encoder) | trained | - | 19.5 (best 20.0) | - |' in with_all
  without = comparison.markdown_table(runs, pre, [0.1, 0.01])  # no column for all the labels
  assert '(pretraining)' not in without and '| linear probe | features | - | 21.2 |' in without
  assert without.endswith("The pretraining run's monitors (all the labels): kNN (k=200) (knn) 32.0, "
                          'linear probe on frozen features (features) 38.0.')


def test_the_report_links_each_picture_once_and_tells_train_from_test_at_one_epoch(tmp_path):
  """Two methods, each with its pictures (the first method's also given as the report's own), one
  epoch: each picture linked once, the epoch count in words, and the one-epoch plot's train and
  test points drawn with markers a legend tells apart."""
  from simclr_jax.report import comparison
  pics = {m: {'embedding_map': str(tmp_path / (f'pictures_{m}' if m != 'simclr' else '') / 'embedding_map.png'),
              'retrieval': str(tmp_path / (f'pictures_{m}' if m != 'simclr' else '') / 'retrieval.png')}
          for m in ('simclr', 'byol')}
  history = [{'epoch': 1, 'train_top1': 0.31, 'train_loss': 2.0, 'test_top1': 0.25, 'test_loss': 2.1}]
  runs = {('supervised', 1.0): {'test_top1': 0.25, 'best_test_top1': 0.25, 'history': history, 'epochs': 1},
          ('finetune', 1.0): {'test_top1': 0.3, 'best_test_top1': 0.3, 'history': history, 'epochs': 1}}
  pre = {'epochs': 1, 'train_seconds': 3.0}
  text = comparison.write_report(str(tmp_path), runs, pre, [1.0], 'h', pics['simclr'], {},
                             methods={m: (pre, None, pics[m]) for m in pics})
  for m in pics:
    for path in pics[m].values():
      assert text.count(f']({os.path.relpath(path, tmp_path)})') == 1, (path, text)
  assert 'Pretraining: 1 epoch, 3 s of training.' in text
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots()
  lines = {l.get_label(): l for l in comparison.draw_curves(ax, runs, 1.0)}
  plt.close(fig)
  for method in ('supervised (from scratch)', 'finetune (SimCLR encoder)'):
    test, train = lines[f'{method} test'], lines[f'{method} train']
    assert test.get_color() == train.get_color()  # one colour a method, the markers tell them apart
    assert (test.get_marker(), train.get_marker()) == ('o', 's') and train.get_markerfacecolor() == 'white'
    assert test.get_markerfacecolor() != 'white' and len(test.get_xdata()) == 1
