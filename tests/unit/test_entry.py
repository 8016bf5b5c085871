"""dlresearch.tools.entry: options dataclass -> flags, one-line errors, exit 2."""

import dataclasses
import importlib
import types

import pytest

from dlresearch.tools import entry


@dataclasses.dataclass(frozen=True)
class Options:
  workdir: str = entry.option(help='The run.', required=True)
  top_k: int = entry.option(5, 'Labels per input (>= 1).')
  scale: float = entry.option(1.0, 'A float.')
  json: bool = entry.option(False, 'One JSON object per input.')
  text: tuple[str, ...] = entry.option((), 'A text.')
  mode: str = entry.option('a', 'A choice.', choices=('a', 'b'))

  def __post_init__(self):
    entry.at_least(self, 'top_k', 1)


@dataclasses.dataclass(frozen=True)
class Positional:
  paths: tuple[str, ...] = entry.option((), 'files', positional='+')
  out: str = entry.option('', 'where')


def _tool(main, options=Options):
  tool = types.ModuleType('fake_tool', 'A fake tool.')
  tool.PROG, tool.Options, tool.main = 'python -m fake', options, main
  return tool


def test_flags_become_typed_frozen_options():
  got = entry.parse(Options, ['--workdir', 'runs/a', '--top_k=3', '--scale=0.5',
                              '--json', '--text=a, b', '--text', 'c',
                              '--mode=b'], 'prog')
  assert got == Options(workdir='runs/a', top_k=3, scale=0.5, json=True,
                        text=('a, b', 'c'), mode='b')
  with pytest.raises(dataclasses.FrozenInstanceError):
    got.top_k = 4  # type: ignore[misc]
  assert entry.parse(Options, ['--workdir=w', '--json=false'], 'p').json is False
  assert entry.parse(Options, ['--workdir=w', '--nojson'], 'p').json is False
  assert entry.parse(Options, ['--workdir=w'], 'p').text == ()
  both = entry.parse(Positional, ['x.png', '--out=o', 'y.png'], 'p')
  assert both == Positional(paths=('x.png', 'y.png'), out='o')


@pytest.mark.parametrize('argv, message', [
    (['--top_k=3'], 'the following arguments are required: --workdir'),
    (['--workdir=w', '--top_k=0'], '--top_k: must be >= 1 (got 0)'),
    (['--workdir=w', '--top_k=x'], "argument --top_k: invalid int value: 'x'"),
    (['--workdir=w', '--json=maybe'], "--json: expected true or false (got 'maybe')"),
    (['--workdir=w', '--mode=c'], "argument --mode: invalid choice: 'c'"),
    (['--workdir=w', '--model=cnn'], 'python -m fake does not take --model; it '
     'takes --workdir, --top_k, --scale, --json, --text, --mode (--help)'),
    (['--workdir=w', 'stray'], "python -m fake does not take the argument 'stray'"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, message, capsys):
  ran = []
  assert entry.run(_tool(ran.append), argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: {message}') and err.count('\n') == 1, err
  assert ran == []  # main never ran: nothing written


def test_errors_of_the_tool_are_one_line_and_exit_2(capsys):
  def fails(options):
    raise FileNotFoundError(f'{options.workdir}: no checkpoint\nsecond line')

  assert entry.run(_tool(fails), ['--workdir=w']) == 2
  assert capsys.readouterr().err == 'error: w: no checkpoint\n'
  # An error of another type is a bug, not bad input: it is not swallowed.
  with pytest.raises(ZeroDivisionError):
    entry.run(_tool(lambda options: 1 / 0), ['--workdir=w'])
  assert entry.run(_tool(lambda options: print(options.top_k)),
                   ['--workdir=w']) == 0
  assert capsys.readouterr().out == '5\n'


@pytest.mark.parametrize('name', ['audit', 'explain', 'monitor', 'predict',
                                  'export', 'plot', 'runs', 'xray'])
def test_every_tool_has_help(name):
  tool = importlib.import_module(f'dlresearch.tools.{name}')
  text = entry.parser(tool.Options, tool.PROG, tool.__doc__).format_help()
  assert text.startswith(f'usage: {tool.PROG}')
  for f in dataclasses.fields(tool.Options):
    assert (f'--{f.name}' in text) or (f.name.upper() in text), f.name
