"""The one lookup of data sources: a dataset string names its source module by its prefix.

    source = get('cifar10', data_dir='', image_size=0)       # or 'folder:/data/pets', image_size=96
    ds = load('cifar10_jpeg', data_dir, train_limit=512)     # both splits decoded (scripts, tests)
    check(spec, image_size)                                  # config checks: one line, or nothing
    local_folder(spec)                                       # the folder a run must keep apart from

SOURCES maps a prefix to its module ('' for the rest: TFDS names). A source module defines PREFIX,
NEEDS_IMAGE_SIZE (images of many sizes resized on load), local_folder(spec) (the folder that
holds the data on this machine, or None) and describe(spec, data_dir=, image_size=, splits=,
test_fraction=) -> sources.Source, reading only metadata and file names. A new source (hf:, wds:)
is one module and one line here.
"""
from __future__ import annotations

import importlib

from simclr_jax.core.errors import DataError
from simclr_jax.data import sources

SOURCES = {
    'folder:': 'simclr_jax.data.folders',
    '': 'simclr_jax.data.tfds_source',
}


def module(spec: str):
  """The source module of a dataset string (the longest prefix that matches)."""
  prefix = max((p for p in SOURCES if spec.startswith(p)), key=len)
  return importlib.import_module(SOURCES[prefix])


def check(spec: str, image_size: int) -> str:
  """What is wrong with a dataset string before anything is read ('' when nothing)."""
  if module(spec).NEEDS_IMAGE_SIZE and not image_size:
    return (f'the images of {spec} are resized on load: set --config.image_size, for example 32, 96 '
            'or 224')
  return ''


def local_folder(spec: str) -> str | None:
  """The folder that holds the data on this machine (a run's workdir keeps apart from it), or None."""
  return module(spec).local_folder(spec) if spec else None


def get(spec: str, data_dir: str = '', *, image_size: int = 0, train_split: str = 'train',
        test_split: str = 'test', test_fraction: float = 0.1) -> sources.Source:
  """The Source a dataset string names. image_size > 0 resizes on load (required where the source
  needs it); the splits are TFDS split strings (test_split '' for none); a labelled folder without
  train/ and test/ holds test_fraction out."""
  problem = check(spec, image_size)
  if problem:
    raise DataError(f'image_size={image_size}: {problem}')
  return module(spec).describe(spec, data_dir=data_dir, image_size=image_size,
                               splits={'train': train_split, 'test': test_split}, test_fraction=test_fraction)


def load(spec: str, data_dir: str = '', train_limit: int = 0, *, max_bad_fraction: float = 0.01,
         **describe) -> sources.Dataset:
  """Both splits of get(spec, data_dir, **describe) decoded, the training split cut to its first
  train_limit images (0: all)."""
  source = get(spec, data_dir, **describe)
  train = source.decode('train', max_bad_fraction)
  count = sources.limited_count(train_limit, len(train.labels), spec)
  if count < len(train.labels):
    train = train.subset(slice(0, count))
  test = source.decode('test', max_bad_fraction) if source.has('test') else None
  return sources.Dataset(spec, source.num_classes, train, test, source.class_names)
