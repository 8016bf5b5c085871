"""Hostile weights and images through the CLI: one line, exit 2, nothing written.

The crafted files of issue 20 (``tests/_weights_files.py``) given to
``experiments.predict --init_from=torch:``/``safetensors:`` once crashed
(a segfault), hung, allocated gigabytes or ended in tracebacks; a
20000x20000 PNG ended in PIL's DecompressionBombError traceback.
"""


import pytest

import _forked  # tests/
import _weights_files as files  # tests/
from _pretrained import mobilenet_pth  # noqa: F401  pylint: disable=unused-import

_TORCH = ['build-on-tensor-record', 'build-on-global-FloatStorage',
          'billion-laughs', 'self-containing-dict', '100k-nested-lists',
          'huge-declared-storage-legacy', 'zero-stride-expansion', 'zip-bomb']
_SAFETENSORS = ['st-header-length-2**63', 'st-overlap']


def _assert_one_line_refusal(result, path, want):
  assert result['code'] == 2, (result['code'], result['stderr'][-2000:])
  errors = [l for l in result['stderr'].splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result['stderr'][-2000:]
  assert path in errors[0] and want in errors[0], errors[0]
  assert 'Traceback' not in result['stderr']
  assert result['stdout'] == ''


def test_predict_refuses_crafted_weights_in_one_line(tmp_path):
  crafted = {name: (fmt, data) for name, fmt, data, _ in files.crafted()}
  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  image = inputs / 'x.png'
  image.write_bytes(b'never read')
  cases, expect = [], []
  for name in _TORCH + _SAFETENSORS:
    fmt, data = crafted[name]
    path = inputs / (name + ('.safetensors' if fmt == 'safetensors'
                             else '.pth'))
    path.write_bytes(data)
    cases.append({'module': 'experiments.predict', 'cwd': str(tmp_path),
                  'argv': ['--model=mobilenet_v2', f'--init_from={fmt}:{path}',
                           str(image)],
                  'snapshot': [str(tmp_path)]})
    expect.append((str(path), 'refus' if fmt == 'torch' else
                   'not a readable safetensors file'))
  results = _forked.run(cases, tmp_path, timeout=600)
  for result, (path, want) in zip(results, expect):
    _assert_one_line_refusal(result, path, want)
  for result in results:  # nothing written (the case files aside)
    before = {k: v for k, v in result['before'][str(tmp_path)].items()
              if not k.startswith('cases-')}
    now = {k: v for k, v in _forked.snapshot(str(tmp_path)).items()
           if not k.startswith('cases-')}
    assert before == now


def test_predict_refuses_an_image_bomb_in_one_line(tmp_path, mobilenet_pth):
  pth = mobilenet_pth
  import io  # pylint: disable=g-import-not-at-top
  import struct  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format='PNG')
  png = bytearray(buf.getvalue())
  png[16:24] = struct.pack('>II', 20_000, 20_000)
  png[29:33] = struct.pack('>I', zlib.crc32(bytes(png[12:29])))
  bomb = tmp_path / 'bomb.png'
  bomb.write_bytes(bytes(png))
  truncated = tmp_path / 'truncated.png'
  big = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(
      0, 255, (64, 64, 3), np.uint8)).save(big, format='PNG')
  truncated.write_bytes(big.getvalue()[:len(big.getvalue()) // 2])
  cases = [{'module': 'experiments.predict', 'cwd': str(tmp_path),
            'argv': ['--model=mobilenet_v2', f'--init_from=torch:{pth}',
                     str(p)]} for p in (bomb, truncated)]
  bomb_result, truncated_result = _forked.run(cases, tmp_path, timeout=600)
  _assert_one_line_refusal(bomb_result, str(bomb), 'decompression bomb')
  _assert_one_line_refusal(truncated_result, str(truncated),
                           'not a readable image')


@pytest.mark.slow
def test_training_refuses_crafted_weights_before_writing(tmp_path):
  crafted = {name: data for name, _, data, _ in files.crafted()}
  cases, paths = [], []
  for name in ('build-on-tensor-record', 'billion-laughs'):
    path = tmp_path / f'{name}.pth'
    path.write_bytes(crafted[name])
    paths.append(str(path))
    # The offline digits quickstart: its data needs no fetch (the finetune
    # preset's Fashion-MNIST files are absent on a fresh machine).
    cases.append({'module': 'experiments.cnn_imagenet', 'cwd': str(tmp_path),
                  'argv': ['--preset=quickstart', '--tiny', f'--init_from=torch:{path}',
                           f'--workdir={tmp_path / name}']})
  results = _forked.run(cases, tmp_path, timeout=600)
  for name, path, result in zip(('build-on-tensor-record', 'billion-laughs'),
                                paths, results):
    _assert_one_line_refusal(result, path, 'refused')
    assert not (tmp_path / name).exists()
