"""The comparison report: test top-1 by method and label fraction, with the protocol of each
figure, accuracy plots, the encoder's pictures and each stage's wall-clock.

    write_report(workdir, runs, pretrain, fractions, header, pictures, wall)
    # runs: {(method, fraction): results dict}, method one of METHODS
"""
from __future__ import annotations

import os

from simclr_jax.core.log import plural
from simclr_jax.report.pictures import save_figure

# method -> (label in the report, protocol of its figure)
METHODS = {
    'supervised': ('supervised (from scratch)', 'trained'),
    'finetune': ('finetune (SimCLR encoder)', 'trained'),
    'finetune_head': ('finetune (from a projector layer)', 'trained'),
    'distilled': ('distilled (student of the fine-tuned model)', 'trained'),
    'linear_features': ('linear probe', 'features'),
    'linear_augmented': ('linear probe', 'augmented'),
}
CURVE_COLOURS = {'supervised': 'tab:red', 'finetune': 'tab:blue', 'finetune_head': 'tab:cyan',
                 'distilled': 'tab:purple', 'linear_augmented': 'tab:green'}


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
  monitors = [(key, protocol, (pretrain.get('labels') or {}).get(key, key))  # every pretraining evaluator
              for key, protocol in (pretrain.get('protocols') or {}).items() if pretrain.get(key) is not None]
  if 1.0 in fractions:
    for key, protocol, label in monitors:
      cells = [_pct(pretrain[key]) if f == 1.0 else '-' for f in fractions]
      rows.append(f'| {label} (pretraining) | {protocol} | ' + ' | '.join(cells) + ' |')
  elif monitors:  # no column for all the labels: the pretraining run's figures below the table
    rows += ['', 'The pretraining run\'s monitors (all the labels): ' + ', '.join(
        f'{label} ({protocol}) {_pct(pretrain[key])}' for key, protocol, label in monitors) + '.']
  return '\n'.join(rows)


def draw_curves(ax, runs: dict, fraction: float) -> list:
  """Train and test top-1 per epoch of the trained methods at one label fraction, on a Matplotlib
  axis; returns the lines drawn."""
  drawn, last = [], 1
  for method, color in CURVE_COLOURS.items():
    r = runs.get((method, fraction))
    if not r or not r.get('history'):
      continue
    label = METHODS[method][0] + ('' if method != 'linear_augmented' else ', augmented')
    epochs = [h['epoch'] for h in r['history']]
    last = max(last, *epochs)
    # Markers: a run of one epoch is one point, which a line alone does not draw; test is a filled
    # circle on a solid line, train a hollow square on a dashed one, told apart at any epoch count.
    drawn += ax.plot(epochs, [100 * h['test_top1'] for h in r['history']], 'o-', ms=5, color=color,
                     label=f'{label} test')
    drawn += ax.plot(epochs, [100 * (h['train_top1'] or 0) for h in r['history']], 's--', ms=5, color=color,
                     markerfacecolor='white', label=f'{label} train')
  from matplotlib.ticker import MaxNLocator
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
  if last < 10:  # few epochs: each one a tick
    ax.set_xlim(0.5, last + 0.5)
    ax.set_xticks(range(1, last + 1))
  ax.set_xlabel('epoch')
  ax.set_ylabel('top-1 accuracy (%)')
  ax.set_title(f'{100 * fraction:g}% of the labels')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return drawn


def plot_curves(runs: dict, fraction: float, path: str) -> None:
  """draw_curves into a PNG at path."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  draw_curves(ax, runs, fraction)
  fig.tight_layout()
  save_figure(fig, path, dpi=100)
  plt.close(fig)


def methods_table(methods: dict, wall: dict) -> str:
  """Method x kNN, online and features probes, finetune top-1, pretraining images/s and
  wall-clock, the final embedding deviation and rank. methods: name -> (pretraining results,
  finetune results or None, its pictures or None)."""
  rows = ['| method | kNN | online linear | features linear | finetune | pretraining images/s | '
          'pretraining wall-clock s | embedding std | embedding rank |', '|---' * 9 + '|']
  for name, (pre, fine, _) in methods.items():
    rate = pre.get('images_per_second')
    std, rank = pre.get('embedding_std'), pre.get('embedding_rank')
    rows.append(f"| {name} | {_pct(pre.get('knn_top1'))} | {_pct(pre.get('online_linear_top1'))} | "
                f"{_pct(pre.get('linear_top1'))} | {_pct((fine or {}).get('test_top1'))} | "
                f"{'-' if rate is None else f'{rate:,.0f}'} | {wall.get(('pretrain', name), float('nan')):.0f} | "
                f"{'-' if std is None else f'{std:.3g}'} | {'-' if rank is None else f'{rank:.3g}'} |")
  return '\n'.join(rows)


def distilled_notes(runs: dict) -> list:
  """One line per distilled run naming its teacher and its student."""
  out = []
  for (method, f), r in sorted(runs.items(), key=lambda kv: kv[0][1], reverse=True):
    if method == 'distilled':
      t, s = r.get('teacher') or {}, r.get('student') or {}
      out.append(f"- distilled at {100 * f:g}% of labels: teacher {t.get('stage')} {t.get('model')} width "
                 f"{t.get('width'):g} from head layer {t.get('finetune_from_head_layer')} "
                 f"({os.path.basename(str(t.get('workdir')))}), student {s.get('model')} width {s.get('width'):g} "
                 f"from {s.get('from')}, {r.get('labelled_examples')} labelled of {r.get('train_examples')} "
                 'training images')
  return out + [''] if out else []


PICTURES = (('embedding_map', 'embedding map'), ('retrieval', 'nearest training images of ten test images'))


def write_report(workdir: str, runs: dict, pretrain: dict, fractions, header: str = '',
                 pictures: dict | None = None, wall: dict | None = None, methods: dict | None = None) -> str:
  """Writes workdir/report.md and workdir/accuracy_<fraction>.png; returns the markdown. pictures:
  the first method's {'embedding_map': path, 'retrieval': path}; methods (name -> (pretraining
  results, finetune results, that method's pictures dict)) adds the methods table and every
  method's pictures. Each picture is linked once."""
  linked = set()

  def picture(title: str, path: str | None) -> list:
    if not path or path in linked:
      return []
    linked.add(path)
    return [f'![{title}]({os.path.relpath(path, workdir)})', '']

  epochs = pretrain.get('epochs')
  lines = ['# SimCLR comparison', '', header, '',
           f"Pretraining: {plural(epochs, 'epoch') if isinstance(epochs, int) else epochs}, "
           f"{pretrain.get('train_seconds', 0):.0f} s of training.", '',
           'Test top-1 (%), final epoch (best epoch in brackets for trained runs). Protocols: '
           '*trained* = the whole classifier trained with augmentation; *features* = logistic '
           'regression on frozen, unaugmented features; *augmented* = a linear head trained on the '
           'frozen encoder with augmentation; *online* = the probe trained alongside pretraining; '
           '*knn* = weighted k-nearest neighbours on frozen features.', '',
           markdown_table(runs, pretrain, fractions), '']
  lines += distilled_notes(runs)
  wall = wall or {}
  if methods and len(methods) > 1:
    lines += ['## Methods', '', 'Test top-1 (%) of each method\'s encoder: kNN (k=200), the online probe and '
              'the features probe at the end of pretraining, and a fine-tune on all the labels; the final '
              'deviation of the L2-normalised embeddings (about 1/sqrt(d) when healthy, 0 collapsed) and '
              'their effective rank (RankMe).', '', methods_table(methods, wall), '']
    for name, (_, _, shown) in methods.items():
      for key, title in PICTURES:
        lines += picture(f'{name}: {title}', (shown or {}).get(key))
  for f in fractions:
    name = f'accuracy_{f:g}.png'
    plot_curves(runs, f, os.path.join(workdir, name))
    lines += [f'![{100 * f:g}% of labels]({name})', '']
  for key, title in PICTURES:
    lines += picture(f'The pretrained encoder: {title}', (pictures or {}).get(key))
  lines += ['| stage | label fraction | epochs | training s | wall-clock s |', '|---|---|---|---|---|']
  for name, (pre, _, _) in (methods or {'pretrain': (pretrain, None, None)}).items():
    key = ('pretrain', name) if methods else ('pretrain', 1.0)
    lines.append(f"| pretrain {name if methods else ''} | 1 | {pre.get('epochs')} | "
                 f"{pre.get('train_seconds', 0):.0f} | {wall.get(key, float('nan')):.0f} |")
  for (m, f), r in sorted(((k, v) for k, v in runs.items()), key=lambda kv: (kv[0][0], kv[0][1])):
    lines.append(f"| {m} | {f:g} | {r.get('epochs')} | {r.get('train_seconds', 0):.0f} | "
                 f"{wall.get((m, f), float('nan')):.0f} |")
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'report.md'), 'w') as fh:
    fh.write(text)
  return text
