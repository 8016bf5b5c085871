"""The library's import layering: experiments -> cli -> train (and inference,
which restores trained runs) -> (data, tasks, optim, parallel, ...) -> models
-> config. Read from the source with ``ast``."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / 'dlresearch'


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(PKG.parent).with_suffix('')
  parts = list(rel.parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def import_graph() -> dict[str, set[str]]:
  """dlresearch module -> the dlresearch modules it imports (anywhere)."""
  modules = {_module_name(p): p for p in PKG.rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        base = node.module
        targets = [f'{base}.{a.name}' for a in node.names] + [base]
      else:
        continue
      deps |= {t for t in targets if t in modules and t != name}
    graph[name] = deps - {'dlresearch'}
  return graph


def test_no_module_imports_the_cli_or_sits_above_it():
  graph = import_graph()
  importers = sorted(m for m, deps in graph.items() if 'dlresearch.cli' in deps)
  assert importers == [], importers


def test_lower_layers_do_not_import_upper_ones():
  graph = import_graph()
  # The top: the CLI, the loop, and what consumes trained runs.
  upper = {'dlresearch.cli', 'dlresearch.train', 'dlresearch.inference',
           'dlresearch.export'}
  for name, deps in graph.items():
    if name in upper or name == 'dlresearch':
      continue
    assert not deps & upper, (name, deps & upper)
  for name, deps in graph.items():
    if name.startswith('dlresearch.models'):
      allowed = {d for d in deps if d.startswith('dlresearch.models')
                 or d == 'dlresearch.config'}
      assert deps == allowed, (name, deps - allowed)
  for name in [n for n in graph if n.startswith('dlresearch.config')]:
    assert all(d.startswith('dlresearch.config.') for d in graph[name]), name


def test_no_import_cycles():
  graph = import_graph()
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    for dep in graph.get(node, ()):
      if state.get(dep) == 'open':
        raise AssertionError(' -> '.join(stack + [node, dep]))
      if dep not in state:
        visit(dep, stack + [node])
    state[node] = 'done'

  for node in graph:
    if node not in state:
      visit(node, [])


def test_distributed_initialize_is_called_only_by_the_cli():
  callers = sorted(
      _module_name(p) for p in PKG.rglob('*.py')
      if 'distributed.initialize(' in p.read_text()
      and p.name != 'distributed.py')
  assert callers == ['dlresearch.cli'], callers
