"""Runs the whole experiment: pretraining, then supervised, finetune and linear_eval at several label
fractions, and writes WORKDIR/report.md with a table and accuracy plots.

    python scripts/compare.py --workdir=runs/compare --pretrain_epochs=200 --epochs=100 --batch_size=512
    python scripts/compare.py --workdir=/tmp/cmp --pretrain_epochs=2 --epochs=2 --batch_size=64 \
        --set dataset=cifar10_jpeg --set data_dir=../shared/data/tfds --set train_limit=1000 --set width=0.125

Each stage is the CLI's train_and_evaluate on configs/<stage>.py; a rerun resumes finished and
unfinished stages alike.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def load_config(stage: str, overrides: dict):
  from simclr_jax.config_base import load_config_file
  config = load_config_file(os.path.join(ROOT, 'configs', f'{stage}.py'))
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    if leaf not in target:
      raise SystemExit(f'error: --set {key}: there is no such config field')
    target[leaf] = value
  return config


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--pretrain_epochs', type=int, default=200)
  p.add_argument('--epochs', type=int, default=100, help='epochs of each downstream stage')
  p.add_argument('--batch_size', type=int, default=512)
  p.add_argument('--fractions', default='1.0,0.1,0.01')
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                 help='a config override for every stage, e.g. --set dataset=cifar10_jpeg')
  args = p.parse_args(argv)
  from simclr_jax import errors, report, validate
  from simclr_jax.main import train_and_evaluate
  common = {}
  for item in args.set:
    key, _, value = item.partition('=')
    common[key] = parse_value(value)
  fractions = [float(f) for f in args.fractions.split(',')]
  os.makedirs(args.workdir, exist_ok=True)

  def run(stage, name, **fields):
    config = load_config(stage, {**common, 'batch_size': args.batch_size, **fields})
    workdir = os.path.join(args.workdir, name)
    validate.validate_config(config)
    validate.check_workdir(workdir, config)
    print(f'== {name}', flush=True)
    return train_and_evaluate(config, workdir)

  try:
    pretrain_dir = os.path.join(args.workdir, 'pretrain')
    pretrain = run('pretrain', 'pretrain', epochs=args.pretrain_epochs,
                   warmup_epochs=min(10.0, args.pretrain_epochs / 10))
    runs = {}
    for f in fractions:
      for method in report.METHODS:
        extra = {'init_from': pretrain_dir} if method != 'supervised' else {}
        runs[(method, f)] = run(method, f'{method}_{f:g}', epochs=args.epochs, label_fraction=f,
                                warmup_epochs=min(2.0, args.epochs / 10), **extra)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  header = (f"dataset {common.get('dataset', 'cifar10')}, batch {args.batch_size}, pretraining "
            f"{args.pretrain_epochs} epochs, downstream {args.epochs} epochs; settings "
            f"{json.dumps(common)}")
  print(report.write_report(args.workdir, runs, pretrain, fractions, header))
  return 0


if __name__ == '__main__':
  sys.exit(main())
