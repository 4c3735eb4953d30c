"""load_encoder and export_encoder: the file's integrity, its targets, and every malformed file."""
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import simclr_jax
from simclr_jax.core.errors import UserError


@pytest.fixture(scope='module')
def exported(pretrained_workdir, tmp_path_factory):
  return simclr_jax.export_encoder(str(pretrained_workdir), str(tmp_path_factory.mktemp('export') / 'encoder.safetensors'))


def _rewrite(source, target, edit_tensors=None, edit_metadata=None):
  from safetensors import safe_open
  with safe_open(source, framework='numpy') as f:
    metadata = dict(f.metadata())
  tensors = load_file(source)
  (edit_tensors or (lambda t: None))(tensors)
  (edit_metadata or (lambda m: None))(metadata)
  save_file(tensors, target, metadata=metadata)
  return target


def test_malformed_files_are_refused_with_one_line(exported, tmp_path):
  cases = [
      (lambda t: t.pop('params/encoder/stem_conv/kernel'), None, 'params/encoder/stem_conv/kernel is missing'),
      (None, lambda m: m.pop('width'), 'lacks the metadata width'),
      (None, lambda m: m.update(width='0.25'), 'does not hold the arrays of a resnet10 of width 0.25'),
      (None, lambda m: m.update(format='"simclr_jax.encoder/1"'), 'format 1 padded strided convolutions differently'),
      (lambda t: t.update({'params/encoder/stem_conv/kernel': t['params/encoder/stem_conv/kernel'] + 1}), None,
       'is corrupt: the tensor params/encoder/stem_conv/kernel does not match its checksum'),
  ]
  for k, (tensors, metadata, fragment) in enumerate(cases):
    if tensors and 'checksum' not in fragment:  # keep the checksums honest for a missing tensor
      def tensors_and_sums(t, edit=tensors):
        edit(t)
      path = _rewrite(exported, str(tmp_path / f'{k}.safetensors'), tensors_and_sums)
    else:
      path = _rewrite(exported, str(tmp_path / f'{k}.safetensors'), tensors, metadata)
    with pytest.raises(UserError) as e:
      simclr_jax.load_encoder(path)
    assert fragment in str(e.value) and '\n' not in str(e.value), (fragment, str(e.value))
  raw = tmp_path / 'flipped.safetensors'
  data = bytearray(open(exported, 'rb').read())
  data[-100] ^= 0x04  # a bit of the last tensor's data
  raw.write_bytes(bytes(data))
  with pytest.raises(UserError, match='is corrupt: the tensor .* does not match its checksum'):
    simclr_jax.load_encoder(str(raw))


def test_export_refuses_targets_that_are_not_regular_files_and_leaves_nothing_behind(pretrained_workdir, tmp_path, monkeypatch):
  fifo = tmp_path / 'pipe'
  os.mkfifo(fifo)
  os.symlink('/dev/null', tmp_path / 'null')
  for target, fragment in ((fifo, 'exists and is not a regular file'), (tmp_path / 'null', 'is not a regular file'),
                           (tmp_path, 'is a folder'), (tmp_path / 'missing' / 'e.safetensors', 'does not exist: create it')):
    with pytest.raises(UserError) as e:
      simclr_jax.export_encoder(str(pretrained_workdir), str(target))
    assert fragment in str(e.value) and '\n' not in str(e.value)
  assert os.path.islink(tmp_path / 'null') and os.readlink(tmp_path / 'null') == '/dev/null'
  before = sorted(os.listdir(tmp_path))

  def failing(src, dst):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(os, 'replace', failing)
  with pytest.raises(OSError):
    simclr_jax.export_encoder(str(pretrained_workdir), str(tmp_path / 'e.safetensors'))
  assert sorted(os.listdir(tmp_path)) == before  # no temporary file left


def test_paths_and_head_layers_that_cannot_be_loaded_are_refused_with_one_line(pretrained_workdir, exported, tmp_path):
  cases = [
      (lambda: simclr_jax.load_encoder(None), 'load_encoder path is None (NoneType): pass the path of a simclr_jax workdir'),
      (lambda: simclr_jax.load_encoder(str(pretrained_workdir), head_layer=7),
       'head_layer=7: the projector of', 'has 2 layers, of which 1 hidden: use a head_layer from 0 (the encoder) to 1'),
      (lambda: simclr_jax.load_encoder(str(pretrained_workdir), head_layer=-1), 'head_layer=-1'),
      (lambda: simclr_jax.load_encoder(exported, head_layer=0), 'pass head_layer to export_encoder instead'),
      (lambda: simclr_jax.export_encoder(exported, str(tmp_path / 'again.safetensors')), 'is a file: pass the workdir'),
  ]
  plain = tmp_path / 'plain.safetensors'
  save_file({'x': np.zeros(3, np.float32)}, str(plain), metadata={'note': 'not json'})
  cases.append((lambda: simclr_jax.load_encoder(str(plain)), 'is a safetensors file but not a simclr_jax export'))
  folder = tmp_path / 'x.safetensors'  # a folder that happens to be named so
  folder.mkdir()
  cases.append((lambda: simclr_jax.load_encoder(str(folder)), 'holds no complete checkpoint'))
  for call, *fragments in cases:
    with pytest.raises(UserError) as e:
      call()
    assert '\n' not in str(e.value) and all(f in str(e.value) for f in fragments), (fragments, str(e.value))
  # A workdir under such a name loads as a workdir; pathlib paths are taken as they are.
  import shutil
  import pathlib
  named = tmp_path / 'run.safetensors'
  shutil.copytree(pretrained_workdir, named)
  assert simclr_jax.load_encoder(named).spec == simclr_jax.load_encoder(pathlib.Path(pretrained_workdir)).spec
