"""A folder of images as a dataset: --config.dataset=folder:PATH.

    layout = scan('/data/pets')          # splits -> [(relative path, label)], class names
    splits = layout.assign(test_fraction=0.1)

Layouts (class names sorted, as torchvision's ImageFolder does):
    PATH/<class>/*.jpg              labelled; split into train and test by test_fraction (fixed seed)
    PATH/*.jpg                      unlabelled: all of it trains, no test split
    PATH/train/..., PATH/test/...   either of the above in each, giving the splits
Nothing is ever written into PATH. Files without an image extension are skipped and counted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from simclr_jax.errors import DataError
from simclr_jax.images import IMAGE_EXTENSIONS, is_image_file

PREFIX = 'folder:'
SPLIT_NAMES = ('train', 'test')


def is_folder_dataset(name: str) -> bool:
  return isinstance(name, str) and name.startswith(PREFIX)


def folder_path(name: str) -> str:
  return os.path.abspath(os.path.expanduser(name[len(PREFIX):]))


@dataclasses.dataclass
class Layout:
  root: str
  class_names: tuple                 # () when unlabelled
  files: dict                        # split ('train', 'test' or 'all') -> [(relative path, label)]
  skipped: list                      # relative paths of files that are not images

  @property
  def labelled(self) -> bool:
    return bool(self.class_names)

  def assign(self, test_fraction: float, seed: int = 0) -> dict:
    """{'train': [...], 'test': [...] or None}: given splits as they are; a labelled folder
    without them split per class by test_fraction with a fixed seed."""
    if 'all' not in self.files:
      return {'train': self.files['train'], 'test': self.files.get('test')}
    entries = self.files['all']
    if not self.labelled:
      return {'train': entries, 'test': None}
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(len(self.class_names)):
      members = [e for e in entries if e[1] == c]
      order = rng.permutation(len(members))
      n_test = int(round(test_fraction * len(members)))
      test += [members[i] for i in sorted(order[:n_test])]
      train += [members[i] for i in sorted(order[n_test:])]
    return {'train': train, 'test': test}

  def fingerprint(self, entries: list, extra: dict) -> str:
    """The files of a split (relative paths, sizes, modification times) and the settings that
    shape the arrays: a cache made from anything else is read again."""
    stats = []
    for rel, label in entries:
      st = os.stat(os.path.join(self.root, rel))
      stats.append((rel, label, st.st_size, st.st_mtime_ns))
    return json.dumps({'root': self.root, 'files': stats, **extra})


def _listing(folder: str) -> tuple[list, list, list]:
  """(sub-folders, image files, other files) directly in folder, sorted; hidden names ignored."""
  dirs, images, others = [], [], []
  for entry in sorted(os.scandir(folder), key=lambda e: e.name):
    if entry.name.startswith('.'):
      continue
    if entry.is_dir():
      dirs.append(entry.name)
    elif is_image_file(entry.name):
      images.append(entry.name)
    else:
      others.append(entry.name)
  return dirs, images, others


def _walk_images(folder: str, prefix: str) -> tuple[list, list]:
  """(image paths, other files) below folder, relative to the dataset root."""
  found, skipped = [], []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    rel = os.path.relpath(dirpath, folder)
    for f in sorted(filenames):
      if f.startswith('.'):
        continue
      path = os.path.normpath(os.path.join(prefix, rel, f))
      (found if is_image_file(f) else skipped).append(path)
  return found, skipped


def _scan_split(root: str, sub: str, class_names: tuple | None) -> tuple[list, tuple, list]:
  """Entries of one split folder (root/sub): class sub-folders or loose images, never both. A
  test split's classes take their labels from the training split's (class_names)."""
  folder = os.path.join(root, sub)
  dirs, images, others = _listing(folder)
  where = folder if sub else root
  if dirs and images:
    raise DataError(f'folder {where!r} mixes class sub-folders ({", ".join(dirs[:3])}) with loose '
                    f'images ({", ".join(images[:3])}): put every image in a class folder for '
                    'labels, or every image loose for unlabelled pretraining')
  skipped = [os.path.join(sub, o) for o in others]
  if not dirs:
    return [(os.path.join(sub, name), -1) for name in images], (), skipped
  names = tuple(dirs) if class_names is None else class_names
  unknown = sorted(set(dirs) - set(names))
  if unknown:
    raise DataError(f'folder {where!r} has classes that train/ lacks ({", ".join(unknown[:3])}): '
                    'give test/ only class folders that train/ has')
  entries = []
  for label, name in enumerate(names):
    if name not in dirs:
      continue
    found, other = _walk_images(os.path.join(folder, name), os.path.join(sub, name))
    entries += [(path, label) for path in found]
    skipped += other
  return entries, names, skipped


def scan(root: str) -> Layout:
  """The layout of a folder dataset, or a DataError naming what is wrong and the fix."""
  if not os.path.exists(root):
    raise DataError(f'dataset folder {root!r} does not exist: point --config.dataset=folder:PATH at '
                    'a folder of images (class sub-folders for labels)')
  if not os.path.isdir(root):
    raise DataError(f'dataset folder {root!r} is a file, not a folder: point --config.dataset='
                    'folder:PATH at a folder of images')
  dirs, images, others = _listing(root)
  if not dirs and not images and not others:
    raise DataError(f'dataset folder {root!r} is empty: put images in it (JPEG, PNG, WebP or BMP), '
                    'in class sub-folders for labels')
  files, skipped = {}, []
  if set(SPLIT_NAMES) & set(dirs) and not images:
    if 'train' not in dirs:
      raise DataError(f'dataset folder {root!r} has test/ but no train/: add train/, or move the '
                      'images up for an automatic split')
    extra = sorted(set(dirs) - set(SPLIT_NAMES))
    if extra:
      raise DataError(f'dataset folder {root!r} has train/ beside other folders ({", ".join(extra[:3])}): '
                      'keep only train/ and test/ at the top, or no split folders at all')
    class_names, skipped = None, list(others)
    for split in SPLIT_NAMES:
      if split in dirs:
        files[split], names, other = _scan_split(root, split, class_names)
        class_names = names if class_names is None else class_names
        skipped += other
    if 'test' in files and bool(class_names) != all(label >= 0 for _, label in files['test']):
      raise DataError(f'dataset folder {root!r}: train/ and test/ must both have class folders or '
                      'both hold loose images')
  else:
    files['all'], class_names, skipped = _scan_split(root, '', None)
  if not any(files.values()):
    raise DataError(f'dataset folder {root!r} holds no images ({", ".join(IMAGE_EXTENSIONS)}); '
                    f'{len(skipped)} other files were found: add images, or point at another folder')
  return Layout(root, tuple(class_names or ()), files, skipped)


def cache_key(root: str) -> str:
  return hashlib.sha1(root.encode()).hexdigest()[:12]
