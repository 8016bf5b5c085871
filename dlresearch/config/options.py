"""Option sections of problems and applications, each with the data kinds it serves.

An experiment defines a section's flags only when one of its presets uses one
of the section's kinds (``dlresearch.cli``); the fields still exist on every
``Config`` and keep their preset or default values elsewhere. The
``register_options`` calls below say which kinds read which section; a
problem module (``dlresearch/problems/``, ``dlresearch/apps/<name>/``) may
make the same call for its own kind. An application declares its own
sections in ``dlresearch/apps/<name>/options.py`` (found by
``dlresearch.config``'s scan, as problems are found by ``problems``').
"""

from dlresearch.config.declare import (MAY_CHANGE, ConfigError, _f, check,
                                        register_options, section)


@section('image')
class Image:
  """image: image size, channels, augmentation and normalisation."""

  image_size: int = _f(0, 'Square image side in pixels (>= 0; 0 = keep the '
                       'stored size of fixed-size datasets).')
  image_channels: int = _f(0, 'Repeat single-channel images to this many '
                           'channels (0 = as stored; 3 for ImageNet models).')
  augment: str = _f('none', 'Per-example training crop and flip: none, '
                    'flip, pad_crop_flip (CIFAR: pad 1/8, random crop, flip) '
                    'or crop_flip (RandomResizedCrop to --image_size with '
                    '--crop_scale_min/--crop_ratio_max, then flip). The '
                    'options below come after it.',
                    choices=('none', 'flip', 'pad_crop_flip', 'crop_flip'))
  crop_scale_min: float = _f(0.08, '--augment=crop_flip: smallest crop area '
                             'as a fraction of the image, in (0, 1] (the '
                             'largest is 1; 0.08 torchvision/timm, 0.05 '
                             'big_vision).')
  crop_ratio_max: float = _f(4 / 3, '--augment=crop_flip: crop aspect '
                             'ratios are log-uniform in [1/r, r]; r >= 1.')
  randaugment_ops: int = _f(0, 'RandAugment: ops applied per training image, '
                            'in [0, 14] (0 = off; 2 in DeiT and big_vision).')
  randaugment_magnitude: float = _f(9.0, 'RandAugment magnitude on the '
                                    "paper's 0-10 scale (10 = each op's "
                                    'strongest; up to 30 extrapolates; 0 = '
                                    'identity for all ops with a magnitude); '
                                    'in [0, 30].')
  randaugment_magnitude_std: float = _f(0.0, 'RandAugment: std of the normal '
                                        'noise added to the magnitude per op '
                                        "(timm's mstd; DeiT 0.5), >= 0.")
  color_jitter: float = _f(0.0, 'Colour jitter: brightness, contrast and '
                           'saturation factors uniform in [1-s, 1+s], random '
                           'order; s in [0, 1] (0 = off; timm 0.4).')
  random_erase: float = _f(0.0, 'Random erasing: probability of one '
                           'rectangle of random pixels per training image, '
                           'in [0, 1] (0 = off; DeiT 0.25).')
  mixup_alpha: float = _f(0.0, 'Mixup: lam ~ Beta(a, a) per batch, >= 0 '
                          '(0 = off; DeiT 0.8). Labels become soft targets '
                          'with --label_smoothing folded in.')
  cutmix_alpha: float = _f(0.0, 'CutMix: lam ~ Beta(a, a) per batch, >= 0 '
                           '(0 = off; DeiT 1.0).')
  mix_prob: float = _f(1.0, 'Probability that a training batch is mixed when '
                       '--mixup_alpha or --cutmix_alpha is on, in [0, 1].')
  mix_switch_prob: float = _f(0.5, 'With both Mixup and CutMix on: the '
                              'probability of CutMix for a mixed batch, in '
                              '[0, 1].')
  normalize: str = _f('scale', 'Image normalisation: none, scale to [0, 1], '
                      'ImageNet mean/std, or per-channel standardisation.',
                      choices=('none', 'scale', 'imagenet', 'standardize'))

  def validate(self):
    for name in ('image_size', 'image_channels'):
      check(getattr(self, name) >= 0, name, '>= 0', getattr(self, name))
    check(0 < self.crop_scale_min <= 1, 'crop_scale_min', 'in (0, 1]',
          self.crop_scale_min)
    check(self.crop_ratio_max >= 1, 'crop_ratio_max', '>= 1',
          self.crop_ratio_max)
    check(0 <= self.randaugment_ops <= 14, 'randaugment_ops', 'in [0, 14]',
          self.randaugment_ops)
    check(0 <= self.randaugment_magnitude <= 30, 'randaugment_magnitude',
          'in [0, 30]', self.randaugment_magnitude)
    check(self.randaugment_magnitude_std >= 0, 'randaugment_magnitude_std',
          '>= 0', self.randaugment_magnitude_std)
    for name in ('color_jitter', 'random_erase', 'mix_prob',
                 'mix_switch_prob'):
      check(0 <= getattr(self, name) <= 1, name, 'in [0, 1]',
            getattr(self, name))
    for name in ('mixup_alpha', 'cutmix_alpha'):
      check(getattr(self, name) >= 0, name, '>= 0', getattr(self, name))
    if (self.mixup_alpha or self.cutmix_alpha) and self.batch_size % 2:
      raise ConfigError('batch_size', 'Mixup/CutMix mix neighbouring '
                        f'examples: use an even batch size (got '
                        f'{self.batch_size})')


register_options(Image, kinds=('classification',))


@section('text')
class Text:
  """text: tokenizer, sequence lengths and the dataset's text columns."""

  tokenizer: str = _f('char', 'Tokenizer built on the train split and kept '
                      'in the workdir: char, bpe (byte-level BPE) or unigram '
                      '(SentencePiece-style).', choices=('char', 'bpe', 'unigram'))
  vocab_size: int = _f(8000, 'Subword vocabulary size, 4 special tokens '
                       'included (>= 1; >= 260 for bpe).')
  seq_len: int = _f(128, 'Tokens per language-model training row (>= 1).')
  max_len: int = _f(64, 'Tokens per padded sequence for classification and '
                    'translation (>= 1; longer ones are truncated, longer '
                    'training pairs dropped).')
  text_key: str = _f('text', 'Dataset feature holding the text.')
  label_key: str = _f('label', 'Dataset feature holding the class label '
                      '(text classification).')
  source_key: str = _f('source', 'Dataset feature holding the source '
                       'sentence (translation).')
  target_key: str = _f('target', 'Dataset feature holding the target '
                       'sentence (translation).')

  def validate(self):
    for name in ('vocab_size', 'seq_len', 'max_len'):
      check(getattr(self, name) > 0, name, '> 0', getattr(self, name))
    if self.tokenizer == 'bpe' and self.vocab_size < 260:
      raise ConfigError('vocab_size', 'byte-level BPE needs >= 260 (4 special '
                        f'tokens + 256 bytes); got {self.vocab_size}')


register_options(Text, kinds=('lm', 'text_classification', 'seq2seq',
                               'hf_text_classification'))


@section('hf_text')
class HfText:
  """hf_text: a pretrained Hugging Face tokenizer for text classification."""

  pretrained_tokenizer: str = _f('', 'hf_text_classification: a Hugging Face '
                                 'tokenizer.json, or the model directory '
                                 'holding one.', on_resume=MAY_CHANGE)


register_options(HfText, kinds=('hf_text_classification',))


@section('generation')
class Generation:
  """generation: sampling a continuation of a prompt at evals."""

  sample: bool = _f(False, 'Language models: at every eval (and with '
                    '--eval_only) continue --prompt and print it.',
                    on_resume=MAY_CHANGE)
  prompt: str = _f('The clouds are in the', 'Text that --sample continues.',
                   on_resume=MAY_CHANGE)
  max_new_tokens: int = _f(200, 'Tokens --sample generates (>= 1).',
                           on_resume=MAY_CHANGE)
  temperature: float = _f(1.0, 'Sampling temperature (> 0).',
                          on_resume=MAY_CHANGE)
  top_k: int = _f(0, 'Sample from the k most likely tokens (>= 0; 0 = all).',
                  on_resume=MAY_CHANGE)
  top_p: float = _f(1.0, '--sample: nucleus sampling, keep the smallest set of '
                    'tokens whose probability reaches p, in (0, 1] (1 = all).',
                    on_resume=MAY_CHANGE)

  def validate(self):
    for name in ('max_new_tokens', 'temperature'):
      check(getattr(self, name) > 0, name, '> 0', getattr(self, name))
    check(self.top_k >= 0, 'top_k', '>= 0', self.top_k)
    check(0 < self.top_p <= 1, 'top_p', 'in (0, 1]', self.top_p)


register_options(Generation, kinds=('lm',))


@section('translation')
class Translation:
  """translation: decoding and BLEU of the translation eval."""

  beam_size: int = _f(1, 'Beam size of the translation eval (>= 1; 1 = '
                      'greedy).', on_resume=MAY_CHANGE)
  bleu_examples: int = _f(0, 'Eval examples decoded for BLEU (>= 0; 0 = '
                          'all).', on_resume=MAY_CHANGE)
  bleu_tokenize: str = _f('13a', 'sacrebleu tokenizer for BLEU (13a: the WMT '
                          'standard; char: character n-grams).',
                          on_resume=MAY_CHANGE)

  def validate(self):
    check(self.beam_size > 0, 'beam_size', '> 0', self.beam_size)
    check(self.bleu_examples >= 0, 'bleu_examples', '>= 0', self.bleu_examples)


register_options(Translation, kinds=('seq2seq',))


@section('audit')
class Audit:
  """audit: per-group metrics and fairness gaps at every eval."""

  audit_group: str = _f('', 'Comma-separated group columns of the dataset '
                        "(e.g. 'sex' or 'sex,race'; ClassLabel or int "
                        'features, never fed to the model): every eval line '
                        "adds per-group metrics ('group/sex=Female/accuracy', "
                        "selection_rate, tpr, fpr, count) and the gaps "
                        "('fairness/sex/demographic_parity_difference', "
                        '_ratio, equalized_odds_difference); the positive '
                        'class is 1. Empty: none. Data kind classification.',
                        on_resume=MAY_CHANGE)


register_options(Audit, kinds=('classification',))
