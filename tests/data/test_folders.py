"""Your own images: folders (labelled, unlabelled, with and without split folders) made from
cifar10_jpeg images written at mixed sizes and formats, TFDS split strings, and every bad input."""
import hashlib
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import DATA_DIR, DATASET, error_line, run_cli, tiny_config
from image_folders import make_folder
from simclr_jax import methods, models
from simclr_jax.data import images, pipeline, registry
from simclr_jax.core import parallel
from simclr_jax.stages import runner, workdir as workdir_lib
from simclr_jax.core.errors import ConfigError, DataError

@pytest.fixture(scope='module')
def source():
  return registry.load(DATASET, DATA_DIR, train_limit=600, test_split='')


def _snapshot(folder):
  out = {}
  for dirpath, _, files in os.walk(folder):
    for f in files:
      with open(os.path.join(dirpath, f), 'rb') as fh:
        out[os.path.relpath(os.path.join(dirpath, f), folder)] = hashlib.sha1(fh.read()).hexdigest()
  return out


def test_decode_makes_rgb_of_one_size_and_honours_exif_orientation(tmp_path, source):
  pixels = source.train.images[0]
  for mode in ('L', 'RGBA', 'P', 'CMYK'):
    Image.fromarray(pixels).convert(mode).save(tmp_path / f'x_{mode}.png' if mode != 'CMYK' else tmp_path / 'x.jpg')
  for f in os.listdir(tmp_path):
    out, upscaled = images.decode(str(tmp_path / f), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and not upscaled
  tall = np.zeros((40, 20, 3), np.uint8)
  tall[:10] = 255  # a white band at the top
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
  Image.fromarray(tall).save(tmp_path / 'rotated.png', exif=exif)
  shown, _ = images.decode(str(tmp_path / 'rotated.png'))
  assert shown.shape == (20, 40, 3) and shown[:, -10:].mean() > 250 and shown[:, :10].mean() < 5
  small, upscaled = images.decode(str(tmp_path / 'rotated.png'), 32)
  assert upscaled and small.shape == (32, 32, 3)


def _torchvision_resize_crop(image, size):
  """torchvision's Resize(size) then CenterCrop(size) on a PIL image, as written in torchvision's
  functional.resize (_compute_resized_output_size) and center_crop: the longer side
  int(size * long / short), bilinear with antialiasing, the crop offset int(round((side - size) / 2))."""
  w, h = image.size
  short, long = min(w, h), max(w, h)
  new_short, new_long = size, int(size * long / short)
  new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
  image = image.resize((new_w, new_h), Image.BILINEAR)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return np.asarray(image.crop((left, top, left + size, top + size)))


def test_folder_images_are_resized_as_torchvision_resize_and_centercrop_do(tmp_path, source):
  """Full decoding, then torchvision's arithmetic: the rounding of the longer side and of the crop
  offset matter for sizes like these (the reduced-size JPEG decoding of earlier versions differed
  from this by up to 98 levels at 32 px)."""
  for k, (w, h) in enumerate([(100, 75), (75, 100), (129, 64), (64, 64), (500, 333), (21, 40)]):
    pixels = np.asarray(Image.fromarray(source.train.images[k]).resize((w, h), Image.BICUBIC))
    for ext in ('png', 'jpg'):
      path = tmp_path / f'{k}.{ext}'
      Image.fromarray(pixels).save(path, quality=95)
      got, _ = images.decode(str(path), 32)
      want = _torchvision_resize_crop(Image.open(path).convert('RGB'), 32)
      np.testing.assert_array_equal(got, want)
  assert images.resize_shape(100, 75, 32) == (42, 32) and images.crop_offset(43, 32) == 6


def test_a_labelled_folder_loads_with_classes_a_fixed_split_and_nothing_written_into_it(tmp_path, source, capsys):
  root = make_folder(tmp_path / 'pets', source, 200)
  before = _snapshot(root)
  ds = registry.load(f'folder:{root}', image_size=32, test_fraction=0.2, max_bad_fraction=0.05)
  assert _snapshot(root) == before
  assert ds.num_classes == 10 and ds.class_names[0] == 'airplane'
  assert len(ds.train.images) + len(ds.test.images) == 201  # the corrupt file: black, unlabelled
  broken = np.flatnonzero(ds.train.labels == -1)
  assert len(broken) == 1 and not ds.train.images[broken[0]].any() and np.all(ds.test.labels >= 0)
  assert 35 <= len(ds.test.images) <= 45 and ds.train.images.shape[1:] == (32, 32, 3)
  out = capsys.readouterr().out
  assert 'cannot be read; each is replaced by a black image without a label' in out and 'cat/broken0.jpg' in out
  assert 'notice: 1 files in' in out and 'notes.txt' in out
  assert 'upscaled' in out
  again = registry.load(f'folder:{root}', image_size=32, test_fraction=0.2, max_bad_fraction=0.05)
  np.testing.assert_array_equal(again.test.labels, ds.test.labels)  # the same split every time
  by_hand = images.decode(str(root / 'airplane' / sorted(os.listdir(root / 'airplane'))[0]), 32)[0]
  assert any(np.array_equal(by_hand, x) for x in np.concatenate([ds.train.images, ds.test.images]))


def test_the_cache_is_read_on_a_second_load_and_read_again_after_a_file_changes(tmp_path, source, capsys, monkeypatch):
  monkeypatch.setenv('SIMCLR_JAX_CACHE', str(tmp_path / 'cache'))
  root = make_folder(tmp_path / 'pics', source, 120, labelled=False, corrupt=0)
  first = registry.load(f'folder:{root}', image_size=32)
  calls = []
  original = images.decode_all
  monkeypatch.setattr(images, 'decode_all', lambda *a, **k: calls.append(1) or original(*a, **k))
  second = registry.load(f'folder:{root}', image_size=32)
  assert not calls and first.num_classes == 0 and second.test is None
  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert np.all(second.train.labels == -1)
  victim = sorted(p for p in os.listdir(root) if p.startswith('img'))[0]
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / victim, format=Image.open(root / victim).format)
  os.utime(root / victim, ns=(1, 1))  # a new modification time
  capsys.readouterr()
  third = registry.load(f'folder:{root}', image_size=32)
  assert calls and 'notice: cache' in capsys.readouterr().out
  assert not np.array_equal(third.train.images, second.train.images)


def test_split_folders_and_stems(tmp_path, source):
  root = make_folder(tmp_path / 'split', source, 100, splits=True, corrupt=0)
  ds = registry.load(f'folder:{root}', image_size=96)
  assert len(ds.test.images) == 20 and ds.train.images.shape[1:] == (96, 96, 3)
  assert models.resolve_stem('auto', 96) == 'imagenet' and models.resolve_stem('auto', 64) == 'cifar'
  import jax
  config = tiny_config(image_size=96)
  model = methods.get('simclr')(config).make_model(models.make_encoder('resnet18', 0.125, 'float32', 'imagenet'))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 96, 96, 3), np.float32), train=False))
  assert model.encoder.stem == 'imagenet' and params['params']['encoder']['stem_conv']['kernel'].shape[:2] == (7, 7)


def test_a_tfds_split_string_slices_the_split():
  sliced = registry.load(DATASET, DATA_DIR, train_split='train[:10%]', test_split='test[:1000]')
  full = registry.load(DATASET, DATA_DIR, test_split='')
  assert len(sliced.train.images) == 5000 and len(sliced.test.images) == 1000
  np.testing.assert_array_equal(sliced.train.images, full.train.images[:5000])
  with pytest.raises(DataError, match=r"has no split 'validation'"):
    registry.load(DATASET, DATA_DIR, train_split='validation')


@pytest.mark.parametrize('make,fragment', [
    (lambda r: None, 'does not exist'),
    (lambda r: r.mkdir(), 'is empty'),
    (lambda r: (r.mkdir(), (r / 'a.txt').write_text('x')), 'holds no images'),
    (lambda r: (r.mkdir(), (r / 'cats').mkdir(), (r / 'cats' / 'a.png').write_bytes(b'x'),
                (r / 'b.png').write_bytes(b'x')), 'mixes class sub-folders (cats) with loose images (b.png)'),
    (lambda r: (r.mkdir(), (r / 'test').mkdir(), (r / 'test' / 'a.png').write_bytes(b'x')), 'has test/ but no train/'),
])
def test_bad_folders_get_one_line_naming_the_path_and_the_fix(tmp_path, make, fragment):
  root = tmp_path / 'data'
  make(root)
  with pytest.raises(DataError, match=re.escape(fragment)) as e:
    registry.load(f'folder:{root}', image_size=32)
  assert str(root) in str(e.value) and '\n' not in str(e.value) and ': ' in str(e.value)


def test_a_file_or_an_unreadable_folder_as_the_root_gets_one_line(tmp_path, monkeypatch):
  root = tmp_path / 'data'
  root.write_bytes(b'x')
  with pytest.raises(DataError, match=re.escape(f"dataset folder '{root}' is a file, not a folder")):
    registry.load(f'folder:{root}', image_size=32)
  root.unlink()
  (root / 'cat').mkdir(parents=True)
  scandir = os.scandir

  def denied(path='.'):  # a root without read permission (simulated: tests may run as root)
    if os.fspath(path) == str(root):
      raise PermissionError(13, 'Permission denied', str(root))
    return scandir(path)
  monkeypatch.setattr(os, 'scandir', denied)
  with pytest.raises(DataError) as e:
    registry.load(f'folder:{root}', image_size=32)
  assert str(e.value) == (f'dataset folder {root} (Permission denied) cannot be read: fix its permissions, '
                          'or point --config.dataset=folder:PATH at another folder'), str(e.value)


def test_too_many_unreadable_images_stop_naming_the_first(tmp_path, source):
  root = make_folder(tmp_path / 'bad', source, 100, splits=True, corrupt=3)
  with pytest.raises(DataError, match=r'3 of the 83 images of folder:.* \(train\) cannot be read, more than '
                                      r'max_bad_fraction=0.01 \(train/cat/broken0.jpg: '):
    registry.load(f'folder:{root}', image_size=32)
  registry.load(f'folder:{root}', image_size=32, max_bad_fraction=0.1)


def test_a_dataset_too_large_for_the_device_and_a_classifier_on_unlabelled_images(tmp_path, source):
  nbytes = registry.get(DATASET, DATA_DIR).nbytes(1000)  # 11,000 images of 32 x 32 x 3 bytes
  with pytest.raises(DataError, match=r'takes 0.03 GiB as uint8 arrays on every device, more than 40% of '
                                      r'its 0.0 GiB .*lower --config.image_size or --config.train_limit'):
    pipeline.choose_placement('device', nbytes, memory=2**20, names=DATASET)
  assert pipeline.choose_placement('device', nbytes, memory=2**30, names=DATASET) == 'device'
  root = make_folder(tmp_path / 'loose', source, 30, labelled=False, corrupt=0)
  config = tiny_config('finetune', dataset=f'folder:{root}', image_size=32, init_from='x')
  with pytest.raises(DataError, match='a classifier stage needs labels, but 30 of its 30 training '
                                      'images have no label'):
    runner.prepare_data(config, str(tmp_path / 'w'), parallel.make_mesh(), require_labels=True)


@pytest.mark.slow
def test_a_labelled_folder_pretrains_then_finetunes_through_the_cli(tmp_path, source):
  root = make_folder(tmp_path / 'pets', source, 300)
  fields = dict(dataset=f'folder:{root}', image_size=32, train_limit=0, epochs=1)
  pre = run_cli('pretrain', tmp_path / 'pre', **fields)
  assert pre.returncode == 0, pre.stderr[-3000:]
  assert "stem cifar (config.stem='auto', 32 px images)" in pre.stdout
  r = json.loads((tmp_path / 'pre' / 'results.json').read_text())
  assert r['knn_top1'] is not None and r['online_linear_top1'] is not None
  fine = run_cli('finetune', tmp_path / 'fine', init_from=tmp_path / 'pre', **fields)
  assert fine.returncode == 0, fine.stderr[-3000:]
  assert json.loads((tmp_path / 'fine' / 'results.json').read_text())['test_top1'] is not None
  # Pictures of a folder run: its image size and data come from its config; the output folder is
  # checked before any work.
  from simclr_jax.core.errors import UserError
  from simclr_jax.report.pictures import pictures_of_run
  made = pictures_of_run(str(tmp_path / 'pre'), str(tmp_path / 'pics'), max_points=60)
  for path in made.values():
    assert open(path, 'rb').read(4) == b'\x89PNG' and os.path.dirname(path) == str(tmp_path / 'pics')
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(UserError, match=r"cannot write the pictures into .*a_file/pics.*: pass --out=FOLDER"):
    pictures_of_run(str(tmp_path / 'pre'), str(tmp_path / 'a_file' / 'pics'))


@pytest.mark.slow
def test_an_unlabelled_folder_pretrains_with_the_monitor_on_eval_dataset(tmp_path, source):
  root = make_folder(tmp_path / 'loose', source, 300, labelled=False, corrupt=0)
  labelled = make_folder(tmp_path / 'labelled', source, 200, splits=True, corrupt=0, start=300)
  proc = run_cli('pretrain', tmp_path / 'pre', dataset=f'folder:{root}', image_size=32, train_limit=0,
                 epochs=1, eval_dataset=f'folder:{labelled}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'notice: evaluator online_linear is skipped: the run has no probe' in proc.stdout
  r = json.loads((tmp_path / 'pre' / 'results.json').read_text())
  assert r['knn_top1'] is not None and r['online_linear_top1'] is None
  bad = run_cli('finetune', tmp_path / 'fine', dataset=f'folder:{root}', image_size=32,
                init_from=tmp_path / 'pre')
  assert bad.returncode == 2 and 'a classifier stage needs labels' in error_line(bad)


def test_dangling_links_and_unreadable_folders_count_as_unreadable_never_silently(tmp_path, source, monkeypatch, capsys):
  root = make_folder(tmp_path / 'pets', source, 60, corrupt=0)
  os.symlink(tmp_path / 'gone.jpg', root / 'cat' / 'dangling.jpg')  # a link to nothing
  ds = registry.load(f'folder:{root}', image_size=32, max_bad_fraction=0.1)
  out = capsys.readouterr().out
  assert 'cat/dangling.jpg' in out and 'cannot be read; each is replaced by a black image' in out
  assert np.sum(np.concatenate([ds.train.labels, ds.test.labels]) == -1) == 1
  unreadable = str(root / 'dog')  # a class folder without read permission (simulated: tests may run as root)
  scandir = os.scandir

  def denied(path='.'):
    if os.fspath(path) == unreadable:
      raise PermissionError(13, 'Permission denied', unreadable)
    return scandir(path)
  monkeypatch.setattr(os, 'scandir', denied)
  fewer = registry.load(f'folder:{root}', image_size=32, max_bad_fraction=0.1)
  out = capsys.readouterr().out
  assert f'notice: 1 folders of {root} cannot be read and their images are left out ({unreadable} (Permission denied))' in out
  dogs = sum(1 for k in range(60) if source.train.labels[k] == 5)
  assert len(fewer.train.labels) + len(fewer.test.labels) == len(ds.train.labels) + len(ds.test.labels) - dogs


def test_a_folder_of_unreadable_images_and_a_test_fraction_that_leaves_no_training_image(tmp_path, source):
  root = tmp_path / 'junk'
  root.mkdir()
  for k in range(5):
    (root / f'{k}.jpg').write_bytes(b'not an image')
  with pytest.raises(DataError, match=r'none of the 5 images of folder:.* can be read') as e:
    registry.load(f'folder:{root}', image_size=32, max_bad_fraction=1.0)
  assert '\n' not in str(e.value)
  pets = make_folder(tmp_path / 'pets', source, 300, corrupt=0)
  with pytest.raises(DataError, match=r'test_fraction=0.99 leaves no training image in .*: lower --config.test_fraction'):
    registry.get(f'folder:{pets}', image_size=32, test_fraction=0.99)


def _fake_checkpoint(workdir, step, data):
  folder = workdir / 'checkpoints' / str(step)
  (folder / 'state').mkdir(parents=True)
  (folder / 'meta').mkdir()
  (folder / 'meta' / 'metadata').write_text(json.dumps({'step': step, 'steps_per_epoch': 4, 'data': data}))


def test_epochs_below_what_was_trained_are_counted_in_the_checkpoints_steps_per_epoch():
  """After images are removed a folder gives fewer steps per epoch; the run's 8 steps at its own
  4 an epoch are still 2 epochs (workdir.prepare passes the checkpoint's meta, before any data
  is read)."""
  with pytest.raises(ConfigError) as e:
    workdir_lib.check_epochs('runs/pets', epochs=1, trained=8, steps_per_epoch=4)
  assert str(e.value) == ("config.epochs=1 is below what the run in 'runs/pets' has already trained "
                          '(8 steps = 2 epochs): pass --config.epochs=2 or more, or another --workdir')
  with pytest.raises(ConfigError, match=r'\(10 steps = 2.5 epochs\): pass --config.epochs=3 or more'):
    workdir_lib.check_epochs('runs/pets', epochs=2, trained=10, steps_per_epoch=4)
  workdir_lib.check_epochs('runs/pets', epochs=2, trained=8, steps_per_epoch=4)  # enough: no error


def test_a_folder_changed_since_the_checkpoint_is_refused_naming_the_change(tmp_path, source, capsys):
  root = make_folder(tmp_path / 'pets', source, 120, corrupt=0)
  name = f'folder:{root}'
  before = registry.get(name, image_size=32)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  _fake_checkpoint(workdir, 8, {'dataset': before.identity})
  workdir_lib.write_manifest(str(workdir), {'dataset': before})
  workdir_lib.check_data(str(workdir), {'dataset': registry.get(name, image_size=32)})  # unchanged: fine
  victim = sorted((root / 'cat').iterdir())[0]
  os.utime(victim, ns=(1, 1))  # modified
  Image.fromarray(source.train.images[500]).save(root / 'cat' / 'new.png')  # added
  os.remove(sorted((root / 'dog').iterdir())[0])  # removed
  after = registry.get(name, image_size=32)
  with pytest.raises(ConfigError) as e:
    workdir_lib.check_data(str(workdir), {'dataset': after})
  message = str(e.value)
  assert '\n' not in message and f'the train split of {name} (config.dataset) changed since checkpoint 8' in message
  assert '(1 added, ' in message and 'first: cat/new.png' in message, message
  assert '--config.allow_data_change=True' in message
  workdir_lib.check_data(str(workdir), {'dataset': after}, allow_change=True)
  assert 'training continues on the new data' in capsys.readouterr().out
