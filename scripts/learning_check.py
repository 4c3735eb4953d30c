"""Does each method learn? For each method: kNN top-1 of the randomly initialised encoder, then
pretraining from configs/<method>.py for a few epochs and its kNN again, on the same images, and
the measured images/s of its step (with its ratio to SimCLR's when SimCLR is among them).

    python scripts/learning_check.py --methods=simclr,mocov3,byol,simsiam,barlow_twins,vicreg \\
        --set dataset=cifar10_jpeg --set data_dir=../shared/data/tfds --set train_limit=2048 \\
        --set width=0.125 --set batch_size=128 --epochs=8 --workdir=/tmp/learning

Every method runs with the same data, model, batch, epochs and seed; everything else is its
recipe. With --linear, also the features probe (a linear classifier on frozen features,
config.evals.linear) at initialisation and after: MAE's features are read that way. Prints a
markdown table and writes WORKDIR/learning.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].replace('\n', ' '),
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog='\n'.join(__doc__.split('\n\n')[1:]))
  p.add_argument('--workdir', required=True)
  p.add_argument('--methods', default='simclr')
  p.add_argument('--epochs', type=int, default=8)
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE', help='an override for every method')
  p.add_argument('--linear', action='store_true', help='also the features probe at initialisation and after')
  args = p.parse_args(argv)
  from compare import load_config, parse_value
  from simclr_jax import evals, validate
  from simclr_jax.core import parallel
  from simclr_jax.core.errors import NonFiniteError
  from simclr_jax.stages import pretrain, runner
  from simclr_jax.train import loop
  common = dict(item.partition('=')[::2] for item in args.set)
  common = {k: parse_value(v) for k, v in common.items()}
  rows = {}
  for method in [m for m in args.methods.split(',') if m]:
    config = load_config('pretrain' if method == 'simclr' else method,
                         {**common, 'epochs': args.epochs, 'checkpoint_every_epochs': 0, 'log_every_steps': 1000,
                          'evals.knn.every_epochs': args.epochs,
                          'evals.linear.every_epochs': args.epochs if args.linear else -1,
                          'evals.online_linear.every_epochs': -1})
    validate.validate_config(config)
    workdir = os.path.join(args.workdir, method)
    mesh = parallel.make_mesh()
    os.makedirs(workdir, exist_ok=True)
    data = runner.prepare_data(config, workdir, mesh)
    settings = runner.loop_settings(config, data.inputs.steps_per_epoch, {})
    task = pretrain.build_task(config, mesh, data.inputs, data.eval_inputs, settings.total_steps)
    knn = evals.KnnEvaluator('knn', config.evals.knn)
    ctx = evals.EvalContext(task.infer, task.state.variables, task.eval_inputs, config.eval_batch_size)
    before = knn(ctx)['knn_top1']
    print(f'{method}: kNN at initialisation {100 * before:.1f}', flush=True)
    linear_before = evals.LinearEvaluator('linear', config.evals.linear)(ctx)['linear_top1'] if args.linear else None
    try:
      after = loop.run(task, workdir, settings)
    except NonFiniteError as e:  # a method that diverges is a row of the table, not the end of the check
      rows[method] = {'knn_at_init': before, 'diverged': str(e).split(':')[0]}
      continue
    rows[method] = {'knn_at_init': before, 'knn_top1': after['knn_top1'], 'final_loss': after['final_loss'],
                    'linear_at_init': linear_before, 'linear_top1': after.get('linear_top1'),
                    'images_per_second': after['images_per_second'], 'embedding_std': after['embedding_std'],
                    'embedding_rank': after['embedding_rank']}
  base = rows.get('simclr', {}).get('images_per_second')
  probe = ' features probe at initialisation, after |' if args.linear else ''
  lines = ['| method | kNN at initialisation | kNN after | gain (points) | images/s | vs SimCLR | embedding std | rank |' + probe,
           '|---|---|---|---|---|---|---|---|' + ('---|' if args.linear else '')]
  for m, r in rows.items():
    if 'diverged' in r:
      lines.append(f"| {m} | {100 * r['knn_at_init']:.1f} | {r['diverged']} | - | - | - | - | - |" +
                   (' - |' if args.linear else ''))
      continue
    ratio = f"{r['images_per_second'] / base:.2f}" if base else '-'
    lines.append(f"| {m} | {100 * r['knn_at_init']:.1f} | {100 * r['knn_top1']:.1f} | "
                 f"{100 * (r['knn_top1'] - r['knn_at_init']):+.1f} | {r['images_per_second']:.0f} | {ratio} | "
                 f"{r['embedding_std']:.3g} | {r['embedding_rank']:.3g} |" +
                 (f" {100 * r['linear_at_init']:.1f}, {100 * r['linear_top1']:.1f} |" if args.linear else ''))
  print('\n'.join(lines))
  with open(os.path.join(args.workdir, 'learning.json'), 'w') as f:
    json.dump({'settings': common, 'epochs': args.epochs, 'methods': rows}, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  sys.exit(main())
