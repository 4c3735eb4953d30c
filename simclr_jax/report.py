"""The comparison report: test top-1 by method and label fraction, with the protocol of each
figure, accuracy plots, the encoder's pictures and each stage's wall-clock.

    write_report(workdir, runs, pretrain, fractions, header, pictures, wall)
    # runs: {(method, fraction): results dict}, method one of METHODS
"""
from __future__ import annotations

import os

# method -> (label in the report, protocol of its figure)
METHODS = {
    'supervised': ('supervised (from scratch)', 'trained'),
    'finetune': ('finetune (SimCLR encoder)', 'trained'),
    'linear_features': ('linear probe', 'features'),
    'linear_augmented': ('linear probe', 'augmented'),
}
PRETRAIN_ROWS = (('knn_top1', 'kNN (k=200)', 'knn'), ('online_linear_top1', 'online linear probe', 'online'),
                 ('linear_top1', 'linear probe at the end of pretraining', 'features'))
CURVE_COLOURS = {'supervised': 'tab:red', 'finetune': 'tab:blue', 'linear_augmented': 'tab:green'}


def _pct(x) -> str:
  return '-' if x is None else f'{100 * x:.1f}'


def markdown_table(runs: dict, pretrain: dict, fractions) -> str:
  head = '| method | protocol | ' + ' | '.join(f'{100 * f:g}% of labels' for f in fractions) + ' |'
  rows = [head, '|---|---' + '|---' * len(fractions) + '|']
  for method, (label, protocol) in METHODS.items():
    if not any((method, f) in runs for f in fractions):
      continue
    cells = []
    for f in fractions:
      r = runs.get((method, f))
      if r is None:
        cells.append('-')
      elif r.get('history'):
        cells.append(f"{_pct(r['test_top1'])} (best {_pct(r['best_test_top1'])})")
      else:
        cells.append(_pct(r['test_top1']))
    rows.append(f'| {label} | {protocol} | ' + ' | '.join(cells) + ' |')
  for key, label, protocol in PRETRAIN_ROWS:
    if pretrain.get(key) is not None:
      cells = [_pct(pretrain[key]) if f == 1.0 else '-' for f in fractions]
      rows.append(f'| {label} | {protocol} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(rows)


def plot_curves(runs: dict, fraction: float, path: str) -> None:
  """Train and test top-1 per epoch of the trained methods at one label fraction."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, color in CURVE_COLOURS.items():
    r = runs.get((method, fraction))
    if not r or not r.get('history'):
      continue
    label = METHODS[method][0] + ('' if method != 'linear_augmented' else ', augmented')
    epochs = [h['epoch'] for h in r['history']]
    ax.plot(epochs, [100 * h['test_top1'] for h in r['history']], '-', color=color, label=f'{label} test')
    ax.plot(epochs, [100 * (h['train_top1'] or 0) for h in r['history']], '--', color=color,
            label=f'{label} train')
  ax.set_xlabel('epoch')
  ax.set_ylabel('top-1 accuracy (%)')
  ax.set_title(f'{100 * fraction:g}% of the labels')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_report(workdir: str, runs: dict, pretrain: dict, fractions, header: str = '',
                 pictures: dict | None = None, wall: dict | None = None) -> str:
  """Writes workdir/report.md and workdir/accuracy_<fraction>.png; returns the markdown."""
  lines = ['# SimCLR comparison', '', header, '',
           f"Pretraining: {pretrain.get('epochs')} epochs, {pretrain.get('train_seconds', 0):.0f} s of "
           'training.', '',
           'Test top-1 (%), final epoch (best epoch in brackets for trained runs). Protocols: '
           '*trained* = the whole classifier trained with augmentation; *features* = logistic '
           'regression on frozen, unaugmented features; *augmented* = a linear head trained on the '
           'frozen encoder with augmentation; *online* = the probe trained alongside pretraining; '
           '*knn* = weighted k-nearest neighbours on frozen features.', '',
           markdown_table(runs, pretrain, fractions), '']
  for f in fractions:
    name = f'accuracy_{f:g}.png'
    plot_curves(runs, f, os.path.join(workdir, name))
    lines += [f'![{100 * f:g}% of labels]({name})', '']
  for key, title in (('embedding_map', 'Embedding map of the pretrained encoder'),
                     ('retrieval', 'Nearest training images of ten test images')):
    if pictures and pictures.get(key):
      lines += [f'![{title}]({os.path.relpath(pictures[key], workdir)})', '']
  lines += ['| stage | label fraction | epochs | training s | wall-clock s |', '|---|---|---|---|---|']
  wall = wall or {}
  lines.append(f"| pretrain | 1 | {pretrain.get('epochs')} | {pretrain.get('train_seconds', 0):.0f} | "
               f"{wall.get(('pretrain', 1.0), float('nan')):.0f} |")
  for (m, f), r in sorted(runs.items()):
    lines.append(f"| {m} | {f:g} | {r.get('epochs')} | {r.get('train_seconds', 0):.0f} | "
                 f"{wall.get((m, f), float('nan')):.0f} |")
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'report.md'), 'w') as fh:
    fh.write(text)
  return text
