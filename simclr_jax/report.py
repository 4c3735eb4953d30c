"""The comparison report: a table of test top-1 (method x label fraction) and accuracy plots.

    write_report(workdir, runs)  # runs: {(method, fraction): results dict}
"""
from __future__ import annotations

import os

METHODS = ('supervised', 'finetune', 'linear_eval')


def _pct(x) -> str:
  return '-' if x is None else f'{100 * x:.1f}'


def markdown_table(runs: dict, fractions) -> str:
  head = '| method | ' + ' | '.join(f'{100 * f:g}% of labels' for f in fractions) + ' |'
  rows = [head, '|---' * (len(fractions) + 1) + '|']
  for m in METHODS:
    cells = []
    for f in fractions:
      r = runs.get((m, f))
      cells.append('-' if r is None else f"{_pct(r['test_top1'])} (best {_pct(r['best_test_top1'])})")
    rows.append(f'| {m} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(rows)


def plot_curves(runs: dict, fraction: float, path: str) -> None:
  """Train and test top-1 per epoch, supervised against finetune (and linear_eval)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, color in zip(METHODS, ('tab:red', 'tab:blue', 'tab:green')):
    r = runs.get((method, fraction))
    if not r:
      continue
    epochs = [h['epoch'] for h in r['history']]
    ax.plot(epochs, [100 * h['test_top1'] for h in r['history']], '-', color=color, label=f'{method} test')
    ax.plot(epochs, [100 * (h['train_top1'] or 0) for h in r['history']], '--', color=color,
            label=f'{method} train')
  ax.set_xlabel('epoch')
  ax.set_ylabel('top-1 accuracy (%)')
  ax.set_title(f'{100 * fraction:g}% of the labels')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_report(workdir: str, runs: dict, pretrain: dict, fractions, header: str = '') -> str:
  """Writes workdir/report.md and workdir/accuracy_<fraction>.png; returns the markdown."""
  lines = ['# SimCLR comparison', '', header, '',
           f"Pretraining: {pretrain.get('epochs')} epochs, kNN top-1 {_pct(pretrain.get('knn_top1'))}%, "
           f"{pretrain.get('train_seconds', 0):.0f} s.", '',
           'Test top-1 (%), final epoch (best epoch in brackets):', '', markdown_table(runs, fractions), '']
  for f in fractions:
    name = f'accuracy_{f:g}.png'
    plot_curves(runs, f, os.path.join(workdir, name))
    lines += [f'![{100 * f:g}% of labels]({name})', '']
  lines += ['| run | label fraction | epochs | train seconds |', '|---|---|---|---|']
  for (m, f), r in sorted(runs.items()):
    lines.append(f"| {m} | {f:g} | {r['epochs']} | {r['train_seconds']:.0f} |")
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'report.md'), 'w') as fh:
    fh.write(text)
  return text
