"""The ```python blocks of README.md and docs/*.md, as CI runs them.

Every ```python block runs, as written, as its own program (``python
FILE`` from the repository root, stdin empty), after the shell examples;
nothing needs marking for that. HTML comments directly above a block (the
lines between it and the comment may only be blank) change how CI runs it:

    <!-- ci: python OLD => NEW -->      run it with the text OLD replaced by
                                        NEW (its tiny form; OLD must be in
                                        the block, so the two cannot drift)
    <!-- ci: python skip: REASON -->    do not run it (REASON is required)

Several substitution comments may stack above one block.

    python3 .ci/snippets.py --list FILE...     one line per block:
                                               "FILE:LINE: python (N lines)"
    python3 .ci/snippets.py --write DIR FILE...  the blocks CI runs, as
                                               DIR/NN_FILE_LINE.py (their
                                               tiny form); prints the paths

A block whose program would use a name it never defines (``images`` in a
snippet that never loads images) is found without running it by
``undefined_names``; tests/unit/test_ci_snippets.py checks every block of
the repository with it.
"""

import ast
import builtins
import dataclasses
import os
import re
import sys

MARKER = re.compile(r'^<!-- ci: python (.*) -->$')


@dataclasses.dataclass(frozen=True)
class Block:
  """One ```python block: where it is, its code, how CI runs it."""

  file: str
  line: int  # of the opening fence, 1-based
  code: str
  substitutions: tuple[tuple[str, str], ...] = ()
  skip: str = ''  # the reason, when CI does not run it

  def tiny(self) -> str:
    """The code CI runs: each OLD replaced by NEW.

    Raises:
      ValueError: an OLD that is not in the block.
    """
    code = self.code
    for old, new in self.substitutions:
      if old not in code:
        raise ValueError(f'{self.file}:{self.line}: the ci marker replaces '
                         f'{old!r}, which the block does not hold')
      code = code.replace(old, new)
    return code


def blocks(path: str) -> list[Block]:
  """The ```python blocks of the Markdown file ``path``, top to bottom.

  Raises:
    ValueError: a malformed marker, or a block left open.
  """
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  out, pending, i = [], [], 0
  while i < len(lines):
    text = lines[i].strip()
    marker = MARKER.match(text)
    if marker:
      pending.append((i + 1, marker.group(1).strip()))
    elif text.startswith('```python') or text == '```py':
      start, body = i + 1, []
      i += 1
      while i < len(lines) and lines[i].strip() != '```':
        body.append(lines[i])
        i += 1
      if i == len(lines):
        raise ValueError(f'{path}:{start}: a ```python block is never closed')
      subs, skip = [], ''
      for where, spec in pending:
        if spec.startswith('skip:') and spec[5:].strip():
          skip = spec[5:].strip()
        elif ' => ' in spec:
          old, new = spec.split(' => ', 1)
          subs.append((old, new))
        else:
          raise ValueError(f'{path}:{where}: expected "<!-- ci: python OLD => "'
                           f'"NEW -->" or "<!-- ci: python skip: REASON -->", '
                           f'got {spec!r}')
      out.append(Block(path, start, '\n'.join(body) + '\n', tuple(subs), skip))
      pending = []
    elif text.startswith('```'):  # another language's block: skip it whole
      i += 1
      while i < len(lines) and not lines[i].strip().startswith('```'):
        i += 1
      pending = []
    elif text and pending:
      raise ValueError(f'{path}:{pending[0][0]}: a ci: python marker must sit '
                       'directly above a ```python block')
    i += 1
  if pending:
    raise ValueError(f'{path}:{pending[0][0]}: a ci: python marker with no '
                     '```python block under it')
  return out


def undefined_names(code: str) -> set[str]:
  """Module-level names ``code`` reads but never binds (imports,
  assignments, defs, loops, ``with``, comprehensions, function arguments and
  builtins count as bound; a name bound anywhere counts everywhere, so this
  misses use-before-definition but never cries wolf)."""
  tree = ast.parse(code)
  bound = set(dir(builtins)) | {'__file__', '__name__'}
  loads = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Name):
      (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      bound |= {(a.asname or a.name).split('.')[0] for a in node.names}
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                           ast.ClassDef)):
      bound.add(node.name)
    elif isinstance(node, ast.arg):
      bound.add(node.arg)
    elif isinstance(node, ast.ExceptHandler) and node.name:
      bound.add(node.name)
  return loads - bound


def main(argv: list[str]) -> int:
  if len(argv) >= 2 and argv[0] == '--list':
    for path in argv[1:]:
      for b in blocks(path):
        b.tiny()  # a stale marker fails the listing too
        how = (f'skipped: {b.skip}' if b.skip else
               '; '.join(f'{o} => {n}' for o, n in b.substitutions) or 'as written')
        print(f'{b.file}:{b.line}: python ({b.code.count(chr(10))} lines, {how})')
    return 0
  if len(argv) >= 3 and argv[0] == '--write':
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    n = 0
    for path in argv[2:]:
      for b in blocks(path):
        if b.skip:
          continue
        n += 1
        name = re.sub(r'[^A-Za-z0-9]+', '_', f'{b.file}_{b.line}')
        target = os.path.join(out, f'{n:02d}_{name}.py')
        with open(target, 'w', encoding='utf-8') as f:
          f.write(b.tiny())
        print(target)
    return 0
  print('usage: snippets.py --list FILE... | --write DIR FILE...',
        file=sys.stderr)
  return 2


if __name__ == '__main__':
  try:
    sys.exit(main(sys.argv[1:]))
  except ValueError as e:
    print(f'ci: {e}', file=sys.stderr)
    sys.exit(1)
