"""dlresearch/data/names.py and cli's name scans: checked without jax."""

import pytest

from dlresearch import cli
from dlresearch.config import Config, ConfigError
from dlresearch.data import names


def test_static_model_and_kind_names_match_the_registries():
  from dlresearch import problems  # pylint: disable=g-import-not-at-top
  from dlresearch.models import registry  # pylint: disable=g-import-not-at-top
  # Only the library's own names: a benchmark imported earlier in this
  # process (benchmarks.workloads registers bench_lenet) is not the library's.
  def library(name):
    model = registry._lookup(name)  # pylint: disable=protected-access
    model = getattr(model, 'func', model)  # functools.partial
    return model.__module__.startswith('dlresearch.')
  assert list(cli.model_names()) == [n for n in registry.names() if library(n)]
  assert list(cli.data_kind_names()) == problems.names()


def test_offline_builders_are_the_datasets_ones():
  from dlresearch.data import datasets  # pylint: disable=g-import-not-at-top
  assert datasets.OFFLINE_BUILDERS == names.OFFLINE_BUILDERS


def test_misspelt_names_get_did_you_mean(tmp_path):
  with pytest.raises(ConfigError, match=r"--model: unknown model 'lenet'; did "
                     r'you mean lenet5\b'):
    cli.check_names(Config(model='lenet'))
  with pytest.raises(ConfigError, match='did you mean classification'):
    cli.check_names(Config(data_kind='clasification'))
  with pytest.raises(ConfigError) as e:
    names.check('digts', str(tmp_path), tfds_names=['mnist', 'cifar10'])
  assert 'did you mean digits?' in str(e.value) and '\n' not in str(e.value)
  cli.check_names(Config(model='all'), extra_models=('all',))  # no error


def test_tfds_names_that_need_tensorflow_suggest_offline_ones_first(tmp_path):
  with pytest.raises(names.NotPrepared) as e:
    names.check('mnist', str(tmp_path), tfds_names=['mnist'])
  first, rest = str(e.value).split('\n', 1)
  assert first.startswith(f'--dataset=mnist is not prepared in {tmp_path}. '
                          'Offline datasets that need no TensorFlow: '
                          '--dataset=fashion_mnist_local (')
  assert '--dataset=digits (' in first
  assert 'download_and_prepare' in rest  # then how to prepare mnist itself


def test_local_and_prepared_names_pass_without_asking_tfds(tmp_path):
  def no_tfds():
    raise AssertionError('asked TFDS for its names')
  (tmp_path / 'mine' / '1.0.0').mkdir(parents=True)
  (tmp_path / 'mine' / '1.0.0' / 'dataset_info.json').write_text('{}')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(names, '_tfds_names', no_tfds)
    for name in ('digits', 'fashion_mnist_local', 'mine', 'mine:1.0.0',
                 f'image_folder:{tmp_path}'):
      names.check(name, str(tmp_path))
    names.check('imagenet2012', 'gs://bucket/tensorflow_datasets')  # unlisted
