"""Pictures of an encoder's embedding: a 2-D map of the test features and a retrieval grid.

    embedding_map(test_f, test_y, class_names, 'embedding_map.png')     # t-SNE, coloured by class
    retrieval_grid(train_f, train_y, train_x, test_f, test_y, test_x, class_names, 'retrieval.png')

Features are L2-normalised here; neighbours are by cosine similarity.
"""
from __future__ import annotations

import os

import numpy as np

from simclr_jax.core import interrupts


def save_figure(fig, path: str, dpi: int = 110) -> None:
  """Writes a matplotlib figure through a temporary file renamed into place: a signal or an error
  never leaves half a PNG (interrupts.temporary removes it)."""
  tmp = f'{path}.tmp{os.getpid()}.png'
  with interrupts.temporary(tmp):
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)


def _normalized(f) -> np.ndarray:
  f = np.asarray(f, np.float32)
  return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _names(class_names, num_classes: int) -> list[str]:
  return list(class_names) if len(class_names) >= num_classes else [str(c) for c in range(num_classes)]


def tsne_2d(features, seed: int = 0) -> np.ndarray:
  """[N, 2] t-SNE (scikit-learn) of the normalised features, after PCA to 50 dimensions."""
  from sklearn.decomposition import PCA
  from sklearn.manifold import TSNE
  f = _normalized(features)
  if f.shape[1] > 50 and f.shape[0] > 50:
    f = PCA(50, random_state=seed).fit_transform(f)
  perplexity = float(min(30, max(2, (f.shape[0] - 1) // 3)))
  return TSNE(2, init='pca', perplexity=perplexity, random_state=seed).fit_transform(f)


def embedding_map(features, labels, class_names, path: str, max_points: int = 2000, seed: int = 0,
                  title: str = '') -> str:
  """A PNG of the t-SNE map of (at most max_points of) the features, one colour and legend entry
  per class."""
  plt = _pyplot()
  labels = np.asarray(labels)
  pick = np.random.default_rng(seed).permutation(len(labels))[:max_points]
  xy = tsne_2d(np.asarray(features)[pick], seed)
  num_classes = int(labels.max()) + 1
  names = _names(class_names, num_classes)
  cmap = plt.get_cmap('tab10' if num_classes <= 10 else 'tab20')
  fig, ax = plt.subplots(figsize=(7.5, 6))
  for c in range(num_classes):
    keep = labels[pick] == c
    ax.scatter(xy[keep, 0], xy[keep, 1], s=6, color=cmap(c % cmap.N), label=names[c], alpha=0.8)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title or f't-SNE of {len(pick)} test features')
  ax.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2, frameon=False)
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)
  return path


def nearest(train_f, test_f, k: int) -> np.ndarray:
  """[len(test_f), k] indices of the k most cosine-similar training features, most similar first."""
  sim = _normalized(test_f) @ _normalized(train_f).T
  idx = np.argpartition(-sim, kth=min(k, sim.shape[1] - 1), axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(sim, idx, axis=1), axis=1)
  return np.take_along_axis(idx, order, axis=1)


def retrieval_grid(train_f, train_y, train_x, test_f, test_y, test_x, class_names, path: str,
                   queries: int = 10, k: int = 8, seed: int = 0, title: str = '') -> str:
  """A PNG grid: each row a test image (one per class where possible) and its k nearest training
  images, each labelled; neighbours of another class get a red frame and a cross."""
  plt = _pyplot()
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  rng = np.random.default_rng(seed)
  rows = []
  for c in rng.permutation(int(test_y.max()) + 1):
    members = np.flatnonzero(test_y == c)
    if len(members) and len(rows) < queries:
      rows.append(int(rng.choice(members)))
  rows += [int(i) for i in rng.permutation(len(test_y)) if int(i) not in rows][:queries - len(rows)]
  neighbours = nearest(train_f, np.asarray(test_f)[rows], k)
  names = _names(class_names, int(max(train_y.max(), test_y.max())) + 1)
  fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.25 * (k + 1), 1.4 * len(rows)))
  axes = np.atleast_2d(axes)
  for r, q in enumerate(rows):
    axes[r, 0].imshow(np.asarray(test_x[q]), interpolation='nearest')
    axes[r, 0].set_title(f'query: {names[test_y[q]]}', fontsize=7, fontweight='bold')
    for j, n in enumerate(neighbours[r]):
      ax = axes[r, j + 1]
      ax.imshow(np.asarray(train_x[n]), interpolation='nearest')
      wrong = train_y[n] != test_y[q]
      ax.set_title(names[train_y[n]], fontsize=7, color='red' if wrong else 'black')
      if wrong:
        for spine in ax.spines.values():
          spine.set_edgecolor('red')
          spine.set_linewidth(2.5)
        ax.text(0.92, 0.08, 'x', color='red', fontsize=11, fontweight='bold', transform=ax.transAxes,
                ha='center', va='center')
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  correct = float(np.mean(train_y[neighbours] == test_y[rows][:, None]))
  fig.suptitle(title or f'{k} nearest training images (cosine); {100 * correct:.0f}% share the '
               'query\'s class; red: another class', fontsize=9)
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)
  return path


def pictures_of_run(workdir: str, out_dir: str = '', dataset: str = '', data_dir: str | None = None,
                    max_points: int = 2000, seed: int = 0, image_size: int = 0) -> dict:
  """Both pictures for the encoder of a workdir (or an exported .safetensors file with `dataset`
  given), on the run's labelled data (its dataset, or its eval_dataset when that is unlabelled),
  read as the run read it (image size, splits, train_limit): {'embedding_map': path,
  'retrieval': path}. The output folder is checked before any work."""
  from simclr_jax.train import checkpoint
  from simclr_jax.data import registry
  from simclr_jax.trained_encoder import load_encoder
  from simclr_jax.core.errors import UserError
  config = {}
  if os.path.isdir(workdir):
    config = checkpoint.read_meta(checkpoint.find_checkpoint(workdir, 'workdir'), 'workdir')['config']
  out_dir = out_dir or (workdir if os.path.isdir(workdir) else os.path.dirname(os.path.abspath(workdir)))
  try:
    os.makedirs(out_dir, exist_ok=True)
    probe = os.path.join(out_dir, f'.write-test-{os.getpid()}')
    open(probe, 'w').close()
    os.remove(probe)
  except OSError as e:
    raise UserError(f'cannot write the pictures into {out_dir!r} ({e.strerror}): pass --out=FOLDER '
                    'to write them elsewhere') from None
  encoder = load_encoder(workdir)
  # An eval_dataset means the training data has no labels: picture the monitors' data.
  name = dataset or config.get('eval_dataset') or config.get('dataset')
  if not name:
    raise UserError('pass the dataset the pictures are made on (--dataset): an encoder file does not name it')
  own = name == config.get('dataset')
  interrupts.set_resume_hint('rerun the same command to make the pictures')
  with interrupts.phase('loading the data for the pictures'):
    ds = registry.load(name, config.get('data_dir', '') if data_dir is None else data_dir,
                       config.get('train_limit', 0) if own else 0,
                       image_size=image_size or encoder.image_shape[0],
                       train_split=config.get('train_split', 'train') if own else 'train',
                       test_split=config.get('test_split', 'test') if own else 'test',
                       test_fraction=config.get('test_fraction', 0.1))
  if ds.test is None or not ds.num_classes:
    raise UserError(f'{name} has no labelled test split to picture: pass --dataset with labelled data')
  train, test = (split.subset(split.labels >= 0) for split in (ds.train, ds.test))
  with interrupts.phase('making the pictures'):  # a signal stops it at once, naming it
    train_f, test_f = encoder.embed(train.images), encoder.embed(test.images)
    return {
        'embedding_map': embedding_map(test_f, test.labels, ds.class_names,
                                       os.path.join(out_dir, 'embedding_map.png'), max_points, seed,
                                       f'{name} test features (t-SNE of {min(max_points, len(test_f))})'),
        'retrieval': retrieval_grid(train_f, train.labels, train.images, test_f, test.labels,
                                    test.images, ds.class_names, os.path.join(out_dir, 'retrieval.png'),
                                    seed=seed)}
