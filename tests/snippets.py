"""The code blocks of README.md and docs/*.md that are marked runnable, for the tests that run them
as printed:

    <!-- test: torchvision -->
    ```python
    ...
    ```

    code = snippets.marked('docs/portable-weights.md')['torchvision']
    namespace = snippets.run(code, cwd=tmp_path, images_uint8=images)   # its variables afterwards
"""
import contextlib
import os
import re

from conftest import ROOT

_MARKED = re.compile(r'<!-- test: ([\w-]+) -->\n```(?:python|bash|sh)\n(.*?)\n```', re.S)


def marked(page: str) -> dict:
  """{name: code} of the page's marked blocks (page: a path from the repository's root)."""
  with open(os.path.join(ROOT, page)) as f:
    return dict(_MARKED.findall(f.read()))


def pages() -> list:
  """README.md and every page of docs/."""
  docs = os.path.join(ROOT, 'docs')
  return ['README.md'] + sorted(os.path.join('docs', p) for p in os.listdir(docs) if p.endswith('.md'))


@contextlib.contextmanager
def _inside(folder):
  before = os.getcwd()
  os.chdir(folder)
  try:
    yield
  finally:
    os.chdir(before)


def run(code: str, cwd, **names) -> dict:
  """Executes a Python block as printed in cwd, with `names` defined first; returns its namespace."""
  namespace = dict(names)
  with _inside(cwd):
    exec(compile(code, '<snippet>', 'exec'), namespace)
  return namespace
