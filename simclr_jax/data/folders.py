"""A folder of images as a data source: --config.dataset=folder:PATH (data.registry's 'folder:').

    layout = scan('/data/pets')          # splits -> [(relative path, label)], class names
    splits = layout.assign(test_fraction=0.1)
    source = describe('folder:/data/pets', image_size=96, test_fraction=0.1)   # a sources.Source

Layouts (class names sorted, as torchvision's ImageFolder does):
    PATH/<class>/*.jpg              labelled; split into train and test by test_fraction (fixed seed)
    PATH/*.jpg                      unlabelled: all of it trains, no test split
    PATH/train/..., PATH/test/...   either of the above in each, giving the splits
Nothing is ever written into PATH. Files without an image extension are skipped and counted;
folders that cannot be listed are left out with a notice; files that cannot be read count as
unreadable images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from simclr_jax.core.errors import DataError
from simclr_jax.data import decode_cache, images, sources
from simclr_jax.data.images import IMAGE_EXTENSIONS, is_image_file
from simclr_jax.core.log import log

PREFIX = 'folder:'
NEEDS_IMAGE_SIZE = True  # images of any size, resized on load
SPLIT_NAMES = ('train', 'test')


def folder_path(name: str) -> str:
  return os.path.abspath(os.path.expanduser(name[len(PREFIX):]))


def local_folder(name: str) -> str:
  """The folder a run never writes into."""
  return folder_path(name)


@dataclasses.dataclass
class Layout:
  root: str
  class_names: tuple                 # () when unlabelled
  files: dict                        # split ('train', 'test' or 'all') -> [(relative path, label)]
  skipped: list                      # relative paths of files that are not images
  unreadable: list = dataclasses.field(default_factory=list)  # 'folder (reason)' left out

  @property
  def labelled(self) -> bool:
    return bool(self.class_names)

  def assign(self, test_fraction: float, seed: int = 0) -> dict:
    """{'train': [...], 'test': [...] or None}: given splits as they are; a labelled folder
    without them split per class by test_fraction: the round(fraction * n) files of each class
    whose names hash lowest (with the seed) are held out, so adding or removing an image moves
    no other image between the splits."""
    if 'all' not in self.files:
      return {'train': self.files['train'], 'test': self.files.get('test')}
    entries = self.files['all']
    if not self.labelled:
      return {'train': entries, 'test': None}
    rank = lambda entry: hashlib.sha1(f'{seed}:{entry[0]}'.encode('utf-8', 'surrogateescape')).hexdigest()
    held = set()
    for c in range(len(self.class_names)):
      members = sorted((e for e in entries if e[1] == c), key=rank)
      held.update(e[0] for e in members[:int(round(test_fraction * len(members)))])
    return {'train': [e for e in entries if e[0] not in held], 'test': [e for e in entries if e[0] in held]}


def _unreadable(path: str, e: OSError) -> str:
  return f'{path} ({e.strerror or type(e).__name__})'


def _listing(folder: str, unreadable: list) -> tuple[list, list, list]:
  """(sub-folders, image files, other files) directly in folder, sorted; hidden names ignored."""
  dirs, found, others = [], [], []
  try:
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
  except OSError as e:
    unreadable.append(_unreadable(folder, e))
    return dirs, found, others
  for entry in entries:
    if entry.name.startswith('.'):
      continue
    if entry.is_dir():
      dirs.append(entry.name)
    elif is_image_file(entry.name):
      found.append(entry.name)
    else:
      others.append(entry.name)
  return dirs, found, others


def _walk_images(folder: str, prefix: str, unreadable: list) -> tuple[list, list]:
  """(image paths, other files) below folder, relative to the dataset root."""
  found, skipped = [], []
  for dirpath, dirnames, filenames in os.walk(folder, onerror=lambda e: unreadable.append(
      _unreadable(e.filename, e))):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    rel = os.path.relpath(dirpath, folder)
    for f in sorted(filenames):
      if f.startswith('.'):
        continue
      path = os.path.normpath(os.path.join(prefix, rel, f))
      (found if is_image_file(f) else skipped).append(path)
  return found, skipped


def _scan_split(root: str, sub: str, class_names: tuple | None, unreadable: list) -> tuple[list, tuple, list]:
  """Entries of one split folder (root/sub): class sub-folders or loose images, never both. A
  test split's classes take their labels from the training split's (class_names)."""
  folder = os.path.join(root, sub)
  dirs, found, others = _listing(folder, unreadable)
  where = folder if sub else root
  if dirs and found:
    raise DataError(f'folder {where!r} mixes class sub-folders ({", ".join(dirs[:3])}) with loose '
                    f'images ({", ".join(found[:3])}): put every image in a class folder for '
                    'labels, or every image loose for unlabelled pretraining')
  skipped = [os.path.join(sub, o) for o in others]
  if not dirs:
    return [(os.path.join(sub, name), -1) for name in found], (), skipped
  names = tuple(dirs) if class_names is None else class_names
  unknown = sorted(set(dirs) - set(names))
  if unknown:
    raise DataError(f'folder {where!r} has classes that train/ lacks ({", ".join(unknown[:3])}): '
                    'give test/ only class folders that train/ has')
  entries = []
  for label, name in enumerate(names):
    if name not in dirs:
      continue
    paths, other = _walk_images(os.path.join(folder, name), os.path.join(sub, name), unreadable)
    entries += [(path, label) for path in paths]
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
  unreadable = []
  dirs, found, others = _listing(root, unreadable)
  if unreadable:
    raise DataError(f'dataset folder {unreadable[0]} cannot be read: fix its permissions, or point '
                    '--config.dataset=folder:PATH at another folder')
  if not dirs and not found and not others:
    raise DataError(f'dataset folder {root!r} is empty: put images in it (JPEG, PNG, WebP or BMP), '
                    'in class sub-folders for labels')
  files, skipped = {}, []
  if set(SPLIT_NAMES) & set(dirs) and not found:
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
        files[split], names, other = _scan_split(root, split, class_names, unreadable)
        class_names = names if class_names is None else class_names
        skipped += other
    if 'test' in files and bool(class_names) != all(label >= 0 for _, label in files['test']):
      raise DataError(f'dataset folder {root!r}: train/ and test/ must both have class folders or '
                      'both hold loose images')
  else:
    files['all'], class_names, skipped = _scan_split(root, '', None, unreadable)
  if not any(files.values()):
    raise DataError(f'dataset folder {root!r} holds no images ({", ".join(IMAGE_EXTENSIONS)}); '
                    f'{len(skipped)} other files and {len(unreadable)} unreadable folders were found: '
                    'add images, or point at another folder')
  return Layout(root, tuple(class_names or ()), files, skipped, unreadable)


def cache_key(root: str) -> str:
  return hashlib.sha1(root.encode('utf-8', 'surrogateescape')).hexdigest()[:12]


def _stat(path: str) -> str:
  """'size mtime' of a file; '-1 -1' for one that cannot be read (a dangling link, no
  permission), which then counts as an unreadable image."""
  try:
    st = os.stat(path)
    return f'{st.st_size} {st.st_mtime_ns}'
  except OSError:
    return '-1 -1'


def describe(name: str, *, image_size: int, test_fraction: float = 0.1, data_dir: str = '',
             splits: dict | None = None) -> 'sources.Source':
  """The Source of folder:PATH: its layout and its files' metadata, nothing decoded (data_dir and
  split strings do not apply to a folder; its splits are its layout's)."""
  from simclr_jax.data import records as records_lib
  root = folder_path(name)
  layout = scan(root)
  if layout.unreadable:
    log(f'notice: {len(layout.unreadable)} folders of {root} cannot be read and their images are '
        f'left out ({"; ".join(layout.unreadable[:3])}): fix their permissions to use them')
  if layout.skipped:
    log(f'notice: {len(layout.skipped)} files in {root} are not images and were skipped (first: '
        f'{", ".join(layout.skipped[:3])})')
  parts = layout.assign(test_fraction)
  if not parts['train']:
    raise DataError(f'test_fraction={test_fraction:g} leaves no training image in {root}: lower '
                    '--config.test_fraction or add images')
  num_classes = len(layout.class_names)
  records, identity, manifest = {}, {}, {}
  for role in SPLIT_NAMES:
    entries = parts.get(role)
    if not entries:
      records[role] = identity[role] = manifest[role] = None
      continue
    records[role] = records_lib.FolderRecords(root, entries)
    manifest[role] = [f'{rel} {label} {_stat(os.path.join(root, rel))}' for rel, label in entries]
    digest = hashlib.sha1('\n'.join(manifest[role]).encode('utf-8', 'surrogateescape')).hexdigest()
    identity[role] = {'count': len(entries), 'hash': digest}

  return sources.Source(name, num_classes, layout.class_names, image_size, records, identity, manifest,
                        FolderReader(name, root, parts, identity, image_size, num_classes))


class FolderReader:
  """Decodes a folder's split once (in parallel) into the user cache, keyed by its contents."""

  def __init__(self, name: str, root: str, parts: dict, identity: dict, image_size: int, num_classes: int):
    self.name, self.root, self.parts, self.identity = name, root, parts, identity
    self.image_size, self.num_classes = image_size, num_classes

  def decode(self, role: str) -> dict:
    entries, root = self.parts[role], self.root

    def build():
      decoded = images.decode_all([os.path.join(root, rel) for rel, _ in entries], self.image_size)
      labels = np.asarray([label for _, label in entries], np.int32)
      labels[[i for i, _ in decoded.bad]] = -1
      return {'images': decoded.images, 'labels': labels,
              'report': {'bad': [(entries[i][0], reason) for i, reason in decoded.bad],
                         'upscaled': decoded.upscaled}}

    path = decode_cache.cache_file('folders', cache_key(root), f'{role}-{self.image_size}.npz')
    fingerprint = json.dumps({'identity': self.identity[role], 'image_size': self.image_size})
    return decode_cache.cached(path, fingerprint, f'{self.name} ({role})', build, len(entries), self.image_size,
                               self.num_classes)

  def labels(self, role: str) -> np.ndarray:
    return np.asarray([label for _, label in self.parts[role]], np.int32)
