"""One entry shape for the tools: a frozen options dataclass and a function.

A tool (audit, explain, monitor, predict, export, plot, runs, xray) is a
module of ``dlresearch/tools/`` with a docstring (its ``--help``), ``PROG``
(its command), ``Options`` and ``main``::

    PROG = 'python -m experiments.predict'

    @dataclasses.dataclass(frozen=True)
    class Options:
      workdir: str = entry.option(help='The run.', required=True)
      top_k: int = entry.option(5, 'Labels per input (>= 1).')

      def __post_init__(self):            # checks: raise ValueError
        entry.at_least(self, 'top_k', 1)

    def main(options: Options) -> int | None: ...

and its command is ``entry.main(module)`` (``experiments/predict.py``, the
``python -m dlresearch.export`` shim, ...).

Flags come from the fields: ``str``/``int``/``float`` take a value
(``--name=V`` or ``--name V``); ``bool`` is ``--name`` / ``--noname`` (also
``--name=true|false``); ``tuple[str, ...]`` repeats (``--text=a --text=b``)
or, with ``positional='+'`` or ``'*'``, collects the positional arguments.
The same dataclass is the tool's Python interface (``Options(...)`` checks
its values). Bad input -- an unknown, malformed or missing flag, a value the
dataclass refuses, or an error of the types in ``ERRORS`` (plus the tool's
own ``errors``) -- ends with one line ``error: ...`` on stderr and exit
status 2, before anything is written.
"""

import argparse
from collections.abc import Sequence
import dataclasses
import importlib
import sys
import types
import typing
from typing import Any, NoReturn

from dlresearch.config import ConfigError

# What bad input raises (ConfigError, WeightsError and CheckpointError... are
# ValueErrors); a tool adds its own with ``errors=``.
ERRORS = (ValueError, OSError, KeyError)
_TRUE = ('true', 't', '1', 'yes')
_FALSE = ('false', 'f', '0', 'no')


class lazy:  # pylint: disable=invalid-name
  """A module imported on first attribute use: ``run_data =
  entry.lazy('dlresearch.tools.run_data')`` at a tool's top keeps jax and
  the data libraries out of the way until the flags have been checked."""

  def __init__(self, name: str):
    self.__dict__['_name'] = name

  def __getattr__(self, attr: str):
    module = importlib.import_module(self.__dict__['_name'])
    return getattr(module, attr)

  def __setattr__(self, attr: str, value) -> None:  # monkeypatching tests
    setattr(importlib.import_module(self.__dict__['_name']), attr, value)


class UsageError(ValueError):
  """A flag that the tool does not know, cannot parse, or needs."""


def option(default: Any = None, help: str = '', *,  # pylint: disable=redefined-builtin
           required: bool = False, positional: str = '',
           choices: Sequence[Any] = ()) -> Any:
  """A field of an options dataclass, with what its flag needs to know."""
  return dataclasses.field(default=default, metadata={
      'help': help, 'required': required, 'positional': positional,
      'choices': tuple(choices)})


def at_least(options: Any, name: str, low: float) -> None:
  """``ValueError`` ``--name: must be >= low (got V)`` when below ``low``."""
  value = getattr(options, name)
  if value < low:
    raise ConfigError(name, f'must be >= {low} (got {value})')


def above(options: Any, name: str, low: float) -> None:
  """``ValueError`` ``--name: must be > low (got V)`` unless above ``low``."""
  value = getattr(options, name)
  if value <= low:
    raise ConfigError(name, f'must be > {low} (got {value})')


def one_line(error: BaseException) -> str:
  """The first line of an error's message (its type if it has none)."""
  text = str(error).strip()
  if isinstance(error, KeyError) and error.args:
    text = str(error.args[0])
  return text.splitlines()[0] if text else type(error).__name__


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise UsageError(message)


def _is_tuple(kind) -> bool:
  return typing.get_origin(kind) is tuple


def parser(cls: type, prog: str, doc: str = '') -> argparse.ArgumentParser:
  """The argparse parser of an options dataclass (``--help`` shows ``doc``)."""
  p = _Parser(prog=prog, description=doc,
              formatter_class=argparse.RawDescriptionHelpFormatter,
              allow_abbrev=False)
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    kind, meta = hints[f.name], f.metadata
    help_ = meta.get('help', '').replace('%', '%%')  # argparse formats it
    if meta.get('positional'):
      p.add_argument(f.name, nargs=meta['positional'], help=help_,
                     metavar=f.name.upper())
    elif kind is bool:
      p.add_argument(f'--{f.name}', action='store_true', default=f.default,
                     help=help_)
      p.add_argument(f'--no{f.name}', dest=f.name, action='store_false',
                     help=argparse.SUPPRESS)
    elif _is_tuple(kind):
      p.add_argument(f'--{f.name}', action='append', default=None,
                     help=help_ + ' (repeatable)')
    else:
      p.add_argument(f'--{f.name}', type=kind, default=f.default,
                     required=meta.get('required', False), help=help_,
                     choices=meta.get('choices') or None)
  return p


def _bool_values(cls: type, argv: Sequence[str]) -> list[str]:
  """``--name=true|false`` of a bool field -> ``--name`` / ``--noname``."""
  hints = typing.get_type_hints(cls)
  flags = {f.name for f in dataclasses.fields(cls) if hints[f.name] is bool}
  out = []
  for arg in argv:
    name, eq, value = arg[2:].partition('=')
    if arg.startswith('--') and eq and name in flags:
      if value.lower() not in _TRUE + _FALSE:
        raise UsageError(f'--{name}: expected true or false (got {value!r})')
      arg = f'--{name}' if value.lower() in _TRUE else f'--no{name}'
    out.append(arg)
  return out


def _unknown(cls: type, prog: str, arg: str) -> str:
  """``PROG does not take ARG; it takes --a, --b, ... (--help)``."""
  what = arg.partition('=')[0] if arg.startswith('-') else f'the argument {arg!r}'
  takes = ', '.join(f.name.upper() if f.metadata.get('positional')
                    else f'--{f.name}' for f in dataclasses.fields(cls))
  return f'{prog} does not take {what}; it takes {takes} (--help)'


def parse(cls: type, argv: Sequence[str], prog: str, doc: str = '') -> Any:
  """Options from command-line arguments (``UsageError``/``ValueError``)."""
  args, unknown = parser(cls, prog, doc).parse_known_intermixed_args(
      _bool_values(cls, argv))
  if unknown:
    raise UsageError(_unknown(cls, prog, unknown[0]))
  args = vars(args)
  hints = typing.get_type_hints(cls)
  for name, value in args.items():
    if _is_tuple(hints[name]):
      args[name] = tuple(value or ())
  return cls(**args)


def run(tool: types.ModuleType, argv: Sequence[str] | None = None) -> int:
  """Parses ``argv`` (default ``sys.argv[1:]``) into ``tool.Options``, runs
  ``tool.main(options)``; the exit status (2: bad input, one line on stderr).

  ``tool.ERRORS`` (optional) adds exception types that mean bad input: a
  tuple, or a function returning one (so that a tool need not import the
  module defining them before its flags are checked).
  """
  argv = sys.argv[1:] if argv is None else argv
  try:
    options = parse(tool.Options, argv, tool.PROG, tool.__doc__ or '')
    return tool.main(options) or 0
  except Exception as e:  # pylint: disable=broad-except
    extra = getattr(tool, 'ERRORS', ())
    if not isinstance(e, ERRORS) and not isinstance(
        e, tuple(extra() if callable(extra) else extra)):
      raise
    print(f'error: {one_line(e)}', file=sys.stderr, flush=True)
    return 2


def main(tool: types.ModuleType) -> NoReturn:
  """``run(tool)`` on ``sys.argv`` and exit with its status."""
  sys.exit(run(tool))
