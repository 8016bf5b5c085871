"""Text experiments on the one loop: data from a TFDS text dataset, eval hooks.

What ``experiments/{rnn_lm,transformer_lm,text_classify,transformer_translate}``
share, so those files stay thin:

- **Options** (``LMOptions``, ``ClassifyOptions``, ``TranslateOptions``): the
  text settings that are not ``Config`` fields (tokenizer, sequence length,
  sampling, beam size, ...). A ``TextPreset`` is a ``cli.Preset`` that also
  carries them; ``define_option_flags`` adds one absl flag per field and
  ``with_flag_options`` resolves preset -> tiny form -> flags, as ``cli`` does
  for ``Config``.
- **Tokenizer** (``get_tokenizer``): built from the train split on the first
  run and saved in the workdir (``char_tokenizer.json`` or
  ``tokenizer.json``); a resumed or ``--eval_only`` run loads that file, so
  token ids never change under a checkpoint. A fresh workdir with
  ``--init_from`` takes the tokenizer of the run it starts from.
- **Data** (``lm_data``, ``classification_data``, ``translation_data``): the
  splits as in-memory ``ArrayDataset``s of token ids plus the task:
  LM rows packed from the documents (each ended by ``<eos>``) for
  ``tasks.LanguageModel``; right-padded/truncated snippets with a mask for
  ``tasks.Classification``; source/target pairs for ``tasks.Seq2Seq``
  (training pairs that do not fit ``max_len`` are dropped). Ids are held as
  uint16 when the vocabulary allows and widened per batch.
- **Eval hooks** (``sample_hook``, ``translation_hook``): a sampled
  continuation of a prompt (``sample``), and BLEU / chrF / exact match of
  decoded translations (``bleu``, ``chrf``, ``exact_match``) with sacrebleu
  on detokenized text.

Label smoothing (``--label_smoothing``) applies in training only: eval loss,
perplexity and bits are those of the true next-token distribution.
"""

import dataclasses
import inspect
import os
import pathlib
from typing import Any, Callable, Sequence

from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from dlresearch import cli, distributed, tasks
from dlresearch import train as train_lib
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline
from dlresearch.data import text
from dlresearch.models import registry

TOKENIZERS = ('char', 'bpe', 'unigram')
CHAR_FILE = 'char_tokenizer.json'
TRANSLATIONS_FILE = 'translations.txt'

# ---------------------------------------------------------------------------
# Options: the experiment settings that are not Config fields.


@dataclasses.dataclass(frozen=True)
class LMOptions:
  """Language modelling: data and ``--sample`` settings."""

  tokenizer: str = 'char'
  vocab_size: int = 1024
  seq_len: int = 128
  text_key: str = 'text'
  sample: bool = False
  prompt: str = 'The clouds are in the'
  max_new_tokens: int = 200
  temperature: float = 1.0
  top_k: int = 0


@dataclasses.dataclass(frozen=True)
class ClassifyOptions:
  """Text classification: tokenizer and padded length."""

  tokenizer: str = 'bpe'
  vocab_size: int = 8000
  max_len: int = 64
  text_key: str = 'text'
  label_key: str = 'label'


@dataclasses.dataclass(frozen=True)
class TranslateOptions:
  """Translation: shared tokenizer, lengths and the BLEU hook."""

  tokenizer: str = 'bpe'
  vocab_size: int = 8000
  max_len: int = 64
  source_key: str = 'source'
  target_key: str = 'target'
  beam_size: int = 1
  bleu_examples: int = 0
  bleu_tokenize: str = '13a'


HELP = {
    'tokenizer': f'Tokenizer built on the train split: {", ".join(TOKENIZERS)} '
                 '(bpe: byte-level BPE; unigram: SentencePiece-style).',
    'vocab_size': 'Subword vocabulary size, 4 special tokens included.',
    'seq_len': 'Tokens per language-model training row.',
    'max_len': 'Tokens per padded sequence (longer ones are truncated).',
    'text_key': 'Dataset feature holding the text.',
    'label_key': 'Dataset feature holding the class label.',
    'source_key': 'Dataset feature holding the source sentence.',
    'target_key': 'Dataset feature holding the target sentence.',
    'sample': 'At every eval (and with --eval_only) continue --prompt and '
              'print it.',
    'prompt': 'Text that --sample continues.',
    'max_new_tokens': 'Tokens --sample generates.',
    'temperature': 'Sampling temperature.',
    'top_k': 'Sample from the k most likely tokens (0: all).',
    'beam_size': 'Beam size for the BLEU eval (1: greedy decoding).',
    'bleu_examples': 'Eval examples decoded for BLEU (0: all).',
    'bleu_tokenize': 'sacrebleu tokenizer for BLEU (13a: WMT standard; '
                     'char: character n-grams).',
}


@dataclasses.dataclass(frozen=True)
class TextPreset(cli.Preset):
  """A ``cli.Preset`` plus its text options and their tiny overrides."""

  options: Any = None
  tiny_options: dict = dataclasses.field(default_factory=dict)


def check_options(opts) -> Any:
  """Range checks; ``ConfigError`` names the flag."""
  if opts.tokenizer not in TOKENIZERS:
    raise ConfigError('tokenizer', f'must be one of {", ".join(TOKENIZERS)} '
                      f'(got {opts.tokenizer!r})')
  if opts.tokenizer == 'bpe' and opts.vocab_size < 260:
    raise ConfigError('vocab_size', 'byte-level BPE needs >= 260 (4 special '
                      f'tokens + 256 bytes); got {opts.vocab_size}')
  for name in ('vocab_size', 'seq_len', 'max_len', 'max_new_tokens',
               'beam_size'):
    if getattr(opts, name, 1) < 1:
      raise ConfigError(name, f'must be >= 1 (got {getattr(opts, name)})')
  for name in ('top_k', 'bleu_examples'):
    if getattr(opts, name, 0) < 0:
      raise ConfigError(name, f'must be >= 0 (got {getattr(opts, name)})')
  if not getattr(opts, 'temperature', 1.0) > 0:
    raise ConfigError('temperature', f'must be > 0 (got {opts.temperature})')
  if hasattr(opts, 'bleu_tokenize'):
    from sacrebleu.metrics import bleu  # pylint: disable=g-import-not-at-top
    if opts.bleu_tokenize not in bleu.BLEU.TOKENIZERS:
      raise ConfigError('bleu_tokenize', 'must be one of '
                        f'{", ".join(bleu.BLEU.TOKENIZERS)} (got '
                        f'{opts.bleu_tokenize!r})')
  return opts


def define_option_flags(options_cls: type,
                        flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One flag per field of ``options_cls``; unset flags keep the preset's."""
  definers = {str: flags.DEFINE_string, int: flags.DEFINE_integer,
              float: flags.DEFINE_float, bool: flags.DEFINE_bool}
  for field in dataclasses.fields(options_cls):
    kind = type(field.default)
    definers[kind](field.name, None,
                   f'{HELP[field.name]} Default: the preset\'s '
                   f'({options_cls.__name__} default {field.default!r}).',
                   flag_values=flag_values)


def options_from_flags(presets: dict[str, TextPreset],
                       flag_values: flags.FlagValues = flags.FLAGS):
  """The preset's options, its tiny overrides with ``--tiny``, then flags."""
  preset = presets[cli.preset_name(presets, flag_values)]
  opts = preset.options
  if flag_values.tiny:
    opts = dataclasses.replace(opts, **preset.tiny_options)
  given = {f.name: flag_values[f.name].value for f in dataclasses.fields(opts)
           if flag_values[f.name].value is not None}
  return check_options(dataclasses.replace(opts, **given))


def with_flag_options(run: Callable, presets: dict[str, TextPreset],
                      flag_values: flags.FlagValues = flags.FLAGS) -> Callable:
  """``run(cfg, workdir, opts)`` as the ``run(cfg, workdir)`` cli.main takes."""
  return lambda cfg, workdir: run(cfg, workdir,
                                  options_from_flags(presets, flag_values))


# ---------------------------------------------------------------------------
# Reading text out of TFDS.


def _register_wmt(name: str) -> None:
  """TFDS registers its WMT builders only when their module is imported."""
  base = name.split('/')[0].split(':')[0]
  if base.startswith('wmt') and base.endswith('_translate'):
    try:
      __import__(f'tensorflow_datasets.translate.{base[:-len("_translate")]}')
    except ImportError:
      pass


def _source(cfg: Config, split: str):
  from dlresearch.data import datasets  # pylint: disable=g-import-not-at-top
  _register_wmt(cfg.dataset)
  manual_dir = os.path.expanduser(cfg.manual_dir) if cfg.manual_dir else None
  return datasets.get_source(cfg.dataset, split,
                             os.path.expanduser(cfg.data_dir), manual_dir)


def open_split(cfg: Config, train: bool):
  """``(split name, source)``: ``--train_split``/``--eval_split`` or defaults.

  Default eval split: ``test``, else ``validation``.
  """
  if train or cfg.eval_split:
    split = (cfg.train_split or 'train') if train else cfg.eval_split
    return split, _source(cfg, split)
  try:
    return 'test', _source(cfg, 'test')
  except ValueError as e:
    if 'Unknown split' not in str(e):
      raise
    return 'validation', _source(cfg, 'validation')


def read_columns(source, opts, fields: Sequence[str]) -> dict[str, Any]:
  """The features that options ``fields`` (e.g. ``text_key``) name.

  Text comes back as lists of str, labels as arrays; a feature the dataset
  lacks is a ``ConfigError`` naming the option's flag.
  """
  out = {}
  for field in fields:
    key = getattr(opts, field)
    try:
      out[key] = text.read_column(source, key)
    except KeyError as e:
      raise ConfigError(field, str(e).strip('"')) from None
  return out


def num_classes(source, label_key: str, labels: np.ndarray) -> int:
  """From the ClassLabel feature when known, else the largest label + 1."""
  info = getattr(source, 'dataset_info', None)
  feature = info.features[label_key] if info is not None else None
  if feature is not None and hasattr(feature, 'num_classes'):
    return int(feature.num_classes)
  return int(np.max(labels)) + 1


# ---------------------------------------------------------------------------
# Tokenizers kept in the workdir.


def tokenizer_file(workdir: str, kind: str) -> pathlib.Path:
  """Where the workdir keeps a tokenizer of ``kind``."""
  name = CHAR_FILE if kind == 'char' else text.SUBWORD_FILE
  return pathlib.Path(workdir) / name


def _saved_kind(path: pathlib.Path) -> str:
  tok = text.load_tokenizer(path)
  if isinstance(tok, text.CharTokenizer):
    return 'char'
  return 'unigram' if type(tok.tokenizer.model).__name__ == 'Unigram' else 'bpe'


def _find_saved(directory: str) -> pathlib.Path | None:
  for kind in ('char', 'bpe'):
    path = tokenizer_file(directory, kind)
    if path.is_file():
      return path
  return None


def _init_from_tokenizer(init_from: str) -> pathlib.Path | None:
  """The tokenizer of the run ``--init_from`` names (workdir or below it)."""
  path = pathlib.Path(os.path.expanduser(init_from)).absolute()
  for directory in (path, path.parent, path.parent.parent):
    found = _find_saved(str(directory))
    if found is not None:
      return found
  return None


def get_tokenizer(cfg: Config, workdir: str, kind: str, vocab_size: int,
                  train_texts: Callable[[], Sequence[str]]) -> text.Tokenizer:
  """The workdir's tokenizer; on a fresh workdir, built and saved first.

  Order: the tokenizer saved in ``workdir``; else the one of the
  ``--init_from`` run (copied into ``workdir``); else one of ``kind`` built
  from ``train_texts()`` (called on process 0 only; the others wait and
  load the file).

  Raises:
    ConfigError: the workdir's tokenizer is of another kind than ``kind``,
      or ``--eval_only`` on a workdir without one.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  saved = _find_saved(workdir)
  if saved is None and cfg.init_from:
    source = _init_from_tokenizer(cfg.init_from)
    if source is not None:
      saved = tokenizer_file(workdir, _saved_kind(source))
      if jax.process_index() == 0:
        _copy_atomic(source, saved)
      _sync('dlresearch_tokenizer_copy')
  if saved is not None:
    found = _saved_kind(saved)
    if found != kind:
      raise ConfigError('tokenizer', f'{saved} holds a {found} tokenizer but '
                        f'--tokenizer={kind}; use --tokenizer={found} or a new '
                        '--workdir')
    tok = text.load_tokenizer(saved)
    logging.info('Tokenizer from %s (vocabulary %d).', saved, tok.vocab_size)
    return tok
  if cfg.eval_only:
    raise ConfigError('eval_only', f'no tokenizer in {workdir}: it is written '
                      'by the training run whose checkpoint you evaluate')
  path = tokenizer_file(workdir, kind)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    texts = train_texts()
    tmp = path.parent / (path.name + '.tmp')
    if kind == 'char':
      tok = text.CharTokenizer.build(texts)
      tok.save(tmp)
    else:
      tok = text.train_subword_tokenizer(texts, vocab_size, kind=kind)
      tok.tokenizer.save(str(tmp))
    os.replace(tmp, path)
    logging.info('Built a %s tokenizer (vocabulary %d) into %s.', kind,
                 tok.vocab_size, path)
  _sync('dlresearch_tokenizer')
  return text.load_tokenizer(path)


def _copy_atomic(src: pathlib.Path, dst: pathlib.Path) -> None:
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = dst.with_suffix('.tmp')
  tmp.write_bytes(src.read_bytes())
  os.replace(tmp, dst)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _initialize(cfg: Config) -> None:
  """Joins the process group before data is built (train.run's own call)."""
  distributed.initialize(
      cfg.coordinator_address or None, cfg.num_processes or None,
      cfg.process_id if cfg.process_id >= 0 else None,
      heartbeat_timeout_s=cfg.heartbeat_timeout_s,
      init_timeout_s=cfg.init_timeout_s)


# ---------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class TextData:
  """What a text experiment hands to ``train.run`` and to its eval hooks."""

  data: pipeline.Data
  tokenizer: Any
  eval_texts: dict[str, list]  # raw eval columns (e.g. references for BLEU)


ID_KEYS = ('inputs', 'targets', 'targets_in')


def compact(arrays: dict[str, np.ndarray], vocab_size: int) -> pipeline.ArrayDataset:
  """An ``ArrayDataset`` holding token ids as uint16 when they fit.

  Its ``batch_fn`` widens them back to int32, so batches look the same.
  """
  if vocab_size <= np.iinfo(np.uint16).max + 1:
    arrays = {k: v.astype(np.uint16) if k in ID_KEYS else v
              for k, v in arrays.items()}

  def widen(batch):
    return {k: v.astype(np.int32) if v.dtype == np.uint16 else v
            for k, v in batch.items()}

  return pipeline.ArrayDataset(arrays, batch_fn=widen)


def _model_kwargs(cfg: Config, **kwargs) -> dict:
  """``kwargs`` the model's factory accepts (e.g. ``max_len``)."""
  registry.names()  # Imports the model modules.
  factory = registry._REGISTRY.get(cfg.model)  # pylint: disable=protected-access
  if factory is None:
    return {k: v for k, v in kwargs.items() if k in ('vocab_size', 'num_classes')}
  params = inspect.signature(factory).parameters
  return {k: v for k, v in kwargs.items() if k in params}


def lm_data(cfg: Config, workdir: str, opts: LMOptions) -> TextData:
  """Packed next-token rows of the train and eval splits.

  The task reports ``bits_per_char`` with the char tokenizer and
  ``bits_per_token`` otherwise, besides ``perplexity`` and token accuracy.
  """
  _initialize(cfg)
  check_options(opts)
  _, train_src = open_split(cfg, train=True)
  train_texts = read_columns(train_src, opts, ['text_key'])[opts.text_key]
  tok = get_tokenizer(cfg, workdir, opts.tokenizer, opts.vocab_size,
                      lambda: train_texts)
  _, eval_src = open_split(cfg, train=False)
  eval_texts = read_columns(eval_src, opts, ['text_key'])[opts.text_key]
  train = compact(text.lm_arrays(train_texts, tok, opts.seq_len), tok.vocab_size)
  evals = compact(text.lm_arrays(eval_texts, tok, opts.seq_len), tok.vocab_size)
  bits = 'bits_per_char' if opts.tokenizer == 'char' else 'bits_per_token'
  task = tasks.LanguageModel(bits_name=bits, label_smoothing=cfg.label_smoothing)
  kwargs = _model_kwargs(cfg, vocab_size=tok.vocab_size, max_len=opts.seq_len)
  return TextData(pipeline.Data(train, evals, task, kwargs), tok, {})


def classification_data(cfg: Config, workdir: str,
                        opts: ClassifyOptions) -> TextData:
  """Padded (``max_len``) token ids, a padding mask and the label."""
  _initialize(cfg)
  check_options(opts)
  keys = ('text_key', 'label_key')
  _, train_src = open_split(cfg, train=True)
  train_cols = read_columns(train_src, opts, keys)
  tok = get_tokenizer(cfg, workdir, opts.tokenizer, opts.vocab_size,
                      lambda: train_cols[opts.text_key])
  _, eval_src = open_split(cfg, train=False)
  eval_cols = read_columns(eval_src, opts, keys)
  classes = num_classes(train_src, opts.label_key, train_cols[opts.label_key])

  def arrays(cols, name):
    out = text.classification_arrays(cols[opts.text_key], cols[opts.label_key],
                                     tok, opts.max_len)
    cut = np.mean(out['mask'][:, -1])
    logging.info('%s: %d examples, %.1f%% cut at max_len=%d', name,
                 len(out['label']), 100 * cut, opts.max_len)
    return compact(out, tok.vocab_size)

  task = tasks.Classification(input_key='inputs', label_key='label',
                              mask_key='mask', loss=cfg.loss,
                              label_smoothing=cfg.label_smoothing)
  kwargs = _model_kwargs(cfg, vocab_size=tok.vocab_size, num_classes=classes,
                         max_len=opts.max_len)
  data = pipeline.Data(arrays(train_cols, 'train'), arrays(eval_cols, 'eval'),
                       task, kwargs)
  return TextData(data, tok, {})


def translation_data(cfg: Config, workdir: str,
                     opts: TranslateOptions) -> TextData:
  """Source/target ids with one tokenizer built on both sides of train.

  Training pairs whose source or target (with ``<eos>``) exceeds ``max_len``
  are dropped; eval pairs are kept (truncated), and the BLEU hook scores
  against the untouched reference text.
  """
  _initialize(cfg)
  check_options(opts)
  keys = ('source_key', 'target_key')
  _, train_src = open_split(cfg, train=True)
  train_cols = read_columns(train_src, opts, keys)
  tok = get_tokenizer(cfg, workdir, opts.tokenizer, opts.vocab_size,
                      lambda: train_cols[opts.source_key] + train_cols[opts.target_key])
  _, eval_src = open_split(cfg, train=False)
  eval_cols = read_columns(eval_src, opts, keys)
  n = opts.max_len
  train = text.translation_arrays(train_cols[opts.source_key],
                                 train_cols[opts.target_key], tok, n + 1)
  fits = ~train['inputs_mask'][:, n] & ~train['targets_mask'][:, n]
  logging.info('train: %d of %d pairs fit max_len=%d', fits.sum(), fits.size, n)
  if not fits.any():
    raise ConfigError('max_len', f'no training pair fits in {n} tokens')
  train = {k: v[fits, :n] for k, v in train.items()}
  evals = text.translation_arrays(eval_cols[opts.source_key],
                                 eval_cols[opts.target_key], tok, n)
  task = tasks.Seq2Seq(label_smoothing=cfg.label_smoothing)
  kwargs = _model_kwargs(cfg, vocab_size=tok.vocab_size, max_len=n)
  data = pipeline.Data(compact(train, tok.vocab_size),
                       compact(evals, tok.vocab_size), task, kwargs)
  return TextData(data, tok, {'source': eval_cols[opts.source_key],
                              'target': eval_cols[opts.target_key]})


# ---------------------------------------------------------------------------
# Eval hooks.


def host_params(state, parallelism: str):
  """This process's full copy of ``state.params`` as NumPy arrays."""

  def get(x):
    if parallelism == 'pmap':  # Replicated with a leading device axis.
      return np.asarray(x.addressable_data(0))[0]
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, state.params)


def continue_prompt(model, params, tokenizer, prompt: str, max_new_tokens: int,
                    rng: jax.Array, temperature: float = 1.0,
                    top_k: int = 0) -> tuple[str, np.ndarray]:
  """Samples ``max_new_tokens`` after ``prompt``; returns (text, new ids).

  An RNN LM carries its state (``decoding.sample_rnn``); a Transformer LM
  uses its KV cache (``decoding.generate``). An empty prompt starts after
  ``<eos>``, i.e. at the start of a document.
  """
  from dlresearch.models import decoding  # pylint: disable=g-import-not-at-top
  from dlresearch.models import rnn  # pylint: disable=g-import-not-at-top
  ids = tokenizer.encode(prompt)
  if not ids.size:
    ids = np.array([tokenizer.eos_id], np.int32)
  sampler = (decoding.sample_rnn if isinstance(model, rnn.RNNLanguageModel)
             else decoding.generate)
  try:
    out = sampler(model, params, ids[None], max_new_tokens, rng,
                  temperature=temperature, top_k=top_k or None)
  except ValueError as e:
    if 'max_len' in str(e):
      raise ConfigError('max_new_tokens', str(e)) from None
    raise
  new = np.asarray(out)[0, ids.size:]
  return tokenizer.decode(new), new


def sample_hook(text_data: TextData, opts: LMOptions, cfg: Config) -> Callable:
  """Eval hook: ``{'sample': prompt + continuation}`` (a fresh draw per step).

  Raises:
    ConfigError: the prompt and ``max_new_tokens`` exceed the model's
      ``max_len`` (checked before training starts).
  """
  tokenizer = text_data.tokenizer
  max_len = cfg.model_kwargs.get('max_len',
                                 text_data.data.model_kwargs.get('max_len'))
  prompt_len = max(tokenizer.encode(opts.prompt).size, 1)
  if max_len and prompt_len + opts.max_new_tokens > max_len:
    raise ConfigError('max_new_tokens', f'the prompt ({prompt_len} tokens) + '
                      f'{opts.max_new_tokens} new tokens exceed the model\'s '
                      f'max_len {max_len} (= --seq_len unless --model_kwargs '
                      'sets it); ask for fewer')

  def hook(model, state):
    params = host_params(state, cfg.parallelism)
    step = int(np.asarray(jax.device_get(
        state.step.addressable_data(0))).reshape(-1)[0])
    rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step)
    continuation, _ = continue_prompt(model, params, tokenizer, opts.prompt,
                                      opts.max_new_tokens, rng,
                                      opts.temperature, opts.top_k)
    return {'sample': opts.prompt + continuation}

  return hook


def run_lm(cfg: Config, workdir: str, opts: LMOptions) -> dict:
  """Trains (or evaluates) a language model; ``opts.sample`` prints a sample."""
  text_data = lm_data(cfg, workdir, opts)
  hooks = [sample_hook(text_data, opts, cfg)] if opts.sample else []
  return print_sample(train_lib.run(cfg, workdir, data=text_data.data,
                                    eval_hooks=hooks))


def print_sample(result: dict) -> dict:
  """Prints ``result['sample']`` as a block; returns the result without it.

  (The sample stays in the eval line of ``metrics.jsonl``.)
  """
  result = dict(result)
  sample = result.pop('sample', None)
  if sample is not None:
    print(f'--- sample at step {result["step"]} ---\n{sample}\n---', flush=True)
  return result


def translation_scores(hypotheses: Sequence[str], references: Sequence[str],
                       tokenize: str = '13a') -> dict[str, float]:
  """Corpus BLEU and chrF (sacrebleu) and the fraction of exact matches."""
  import sacrebleu  # pylint: disable=g-import-not-at-top
  hyps, refs = list(hypotheses), [list(references)]
  return {
      'bleu': float(sacrebleu.corpus_bleu(hyps, refs, tokenize=tokenize).score),
      'chrf': float(sacrebleu.corpus_chrf(hyps, refs).score),
      'exact_match': float(np.mean([h == r for h, r in zip(hyps, refs[0])])),
  }


def translate(model, params, tokenizer, inputs: np.ndarray,
              inputs_mask: np.ndarray, max_len: int, batch_size: int,
              beam_size: int = 1) -> list[str]:
  """Greedy (``beam_size=1``) or beam-search translations of id rows."""
  from dlresearch.models import decoding  # pylint: disable=g-import-not-at-top
  params = jax.device_put(params, jax.local_devices()[0])
  out = []
  for start in range(0, len(inputs), batch_size):
    src = np.asarray(inputs[start:start + batch_size], np.int32)
    mask = np.asarray(inputs_mask[start:start + batch_size], bool)
    real = len(src)
    if real < batch_size:  # Pad with copies of row 0: one compiled shape.
      src = np.concatenate([src, np.repeat(src[:1], batch_size - real, 0)])
      mask = np.concatenate([mask, np.repeat(mask[:1], batch_size - real, 0)])
    kw = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
              src_mask=mask, pad_id=tokenizer.pad_id)
    if beam_size > 1:
      ids = decoding.beam_search(model, params, src, max_len,
                                 beam_size=beam_size, **kw)[0][:, 0]
    else:
      ids = decoding.greedy_decode(model, params, src, max_len, **kw)
    ids = np.asarray(ids)[:real]
    out += [tokenizer.decode(row, stop_at_eos=True) for row in ids]
  return out


def translation_hook(text_data: TextData, opts: TranslateOptions, cfg: Config,
                     workdir: str) -> Callable:
  """Eval hook: decodes the eval split (its first ``bleu_examples``).

  Adds ``bleu`` (sacrebleu, ``--bleu_tokenize``), ``chrf`` and
  ``exact_match``; process 0 writes ``source / reference / hypothesis``
  triples to ``WORKDIR/translations.txt``.
  """
  arrays = text_data.data.eval.arrays
  count = len(text_data.eval_texts['target'])
  if opts.bleu_examples:
    count = min(count, opts.bleu_examples)
  inputs = arrays['inputs'][:count]
  inputs_mask = arrays['inputs_mask'][:count]
  sources = text_data.eval_texts['source'][:count]
  references = text_data.eval_texts['target'][:count]
  batch_size = cfg.eval_batch_size or cfg.batch_size

  def hook(model, state):
    params = host_params(state, cfg.parallelism)
    hyps = translate(model, params, text_data.tokenizer, inputs, inputs_mask,
                     opts.max_len, batch_size, opts.beam_size)
    if jax.process_index() == 0:
      path = pathlib.Path(workdir) / TRANSLATIONS_FILE
      tmp = path.with_suffix('.tmp')
      tmp.write_text(''.join(f'{s}\n{r}\n{h}\n\n' for s, r, h in
                             zip(sources, references, hyps)), encoding='utf-8')
      os.replace(tmp, path)
    return translation_scores(hyps, references, opts.bleu_tokenize)

  return hook


__all__ = [
    'ClassifyOptions', 'LMOptions', 'TextData',
    'TextPreset', 'TranslateOptions', 'check_options', 'classification_data',
    'compact', 'continue_prompt', 'define_option_flags', 'get_tokenizer',
    'host_params', 'lm_data', 'open_split', 'options_from_flags',
    'print_sample', 'sample_hook', 'tokenizer_file', 'translate',
    'translation_data', 'translation_hook', 'translation_scores',
    'with_flag_options',
]
