"""The documentation cannot drift from the code: every fenced code block in docs/ (and the README's
examples) is run or compiled by this suite.

- ```python blocks run, a page's blocks in order in one namespace, in a fresh temporary directory.
- ```sh blocks run there too (bash -euo pipefail), between the page's Python blocks in page order;
  the installed `torch-safetensors` command is on PATH.
- ```cpp and ```cmake blocks are excerpts of files in examples/, line for line (indentation aside):
  scripts/test.sh builds examples/ against the installed package and runs them (docs_examples runs
  examples/docs/*.cpp).
- Any other block (or one without a language) is an error: a block that nothing checks would drift.

The README's ```sh blocks are the set-up commands (they install and run the whole suite); they are
the test command itself, so they are checked to name scripts that exist rather than run.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[^`\s]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```\s*$",
                   re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def pages():
    return sorted(DOCS.rglob("*.md"))


def blocks(path):
    """(language, body, line number) of each fenced block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        indent = len(match.group("indent"))
        body = "\n".join(line[indent:] for line in match.group("body").splitlines())
        found.append((match.group("lang"), body, text.count("\n", 0, match.start()) + 1))
    return found


def _stripped(lines):
    return [line.strip() for line in lines]


_EXCERPT_SOURCES = None


def _excerpt_sources():
    global _EXCERPT_SOURCES
    if _EXCERPT_SOURCES is None:
        files = sorted(EXAMPLES.rglob("*.cpp")) + sorted(EXAMPLES.rglob("*.h")) + sorted(
            EXAMPLES.rglob("CMakeLists.txt"))
        _EXCERPT_SOURCES = [(f, _stripped(f.read_text(encoding="utf-8").splitlines()))
                            for f in files]
    return _EXCERPT_SOURCES


def excerpt_of(body):
    """The examples/ file that holds `body` line for line, or None."""
    want = _stripped(body.strip("\n").splitlines())
    for path, lines in _excerpt_sources():
        for start in range(len(lines) - len(want) + 1):
            if lines[start:start + len(want)] == want:
                return path
    return None


def _where(path, line):
    return f"{path.relative_to(ROOT)}:{line}"


def _check_excerpts(path, found):
    for lang, body, line in found:
        if lang in ("cpp", "cmake"):
            assert excerpt_of(body) is not None, (
                f"{_where(path, line)}: this ```{lang} block is not an excerpt of any file in "
                "examples/ (put the code in examples/docs/<page>.cpp, where docs_examples runs it)")


def _run_page(path, tmp_path, found, run_sh=True):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    namespace = {"__name__": "__docs__"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for lang, body, line in found:
            if lang == "python":
                try:
                    exec(compile(body, _where(path, line), "exec"), namespace)
                except Exception as error:
                    raise AssertionError(
                        f"{_where(path, line)}: the Python block raised {error!r}") from error
            elif lang == "sh" and run_sh:
                result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path,
                                        env=env, capture_output=True, text=True, timeout=600)
                assert result.returncode == 0, (
                    f"{_where(path, line)}: the sh block exited {result.returncode}\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    finally:
        os.chdir(cwd)


def test_docs_exist():
    assert len(pages()) >= 10, [str(p) for p in pages()]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_blocks(page, tmp_path):
    found = blocks(page)
    for lang, _, line in found:
        assert lang in ("python", "sh", "cpp", "cmake"), (
            f"{_where(page, line)}: a ```{lang or '(no language)'} block: use python, sh, cpp or "
            "cmake (each is run or compiled by the tests), or write it as text")
    _check_excerpts(page, found)
    assert shutil.which("torch-safetensors") or not any(lang == "sh" for lang, _, _ in found), (
        "the torch-safetensors command is not on PATH: install the package first")
    _run_page(page, tmp_path, found)


def test_readme_blocks(tmp_path):
    found = blocks(README)
    _check_excerpts(README, found)
    for lang, body, line in found:
        assert lang in ("python", "sh", "cpp", "cmake"), f"{_where(README, line)}: ```{lang}"
        if lang == "sh":
            for script in re.findall(r"\b(?:scripts|\.ci)/[\w./-]+", body):
                assert (ROOT / script).exists(), f"{_where(README, line)}: no {script}"
    _run_page(README, tmp_path, found, run_sh=False)


@pytest.mark.parametrize("page", [README] + pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for match in LINK.finditer(text):
        target = match.group("target").split("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_readme_links_every_page():
    text = README.read_text(encoding="utf-8")
    linked = {(README.parent / m.group("target").split("#")[0]).resolve()
              for m in LINK.finditer(text)}
    user_pages = [p for p in pages() if p.parent == DOCS]
    missing = [str(p.relative_to(ROOT)) for p in user_pages if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"
    assert len(text.splitlines()) <= 200, f"README.md has {len(text.splitlines())} lines"
