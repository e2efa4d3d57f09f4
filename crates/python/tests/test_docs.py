"""The documentation against the code: the Python reference is what the docstrings give,
every runnable Python example in the README and docs runs, and every internal link and anchor
resolves (README, ARCHITECTURE, CHANGELOG and docs/)."""

import contextlib
import glob
import io
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
NOT_RUN = "<!-- not run"


def pages():
    found = [os.path.join(REPO, name) for name in ("README.md", "ARCHITECTURE.md", "CHANGELOG.md")]
    return found + sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))


def blocks(path, language):
    """(line number, code) of each fenced block in `language` not marked as not run."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            start = i
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if not (start > 0 and lines[start - 1].startswith(NOT_RUN)):
                out.append((start + 1, "\n".join(body) + "\n"))
        i += 1
    return out


def test_the_python_reference_is_generated_from_the_docstrings(tmp_path):
    out = tmp_path / "python.md"
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "python_reference.py"), "--out", str(out)],
                   check=True, capture_output=True)
    checked_in = open(os.path.join(REPO, "docs", "reference", "python.md"), encoding="utf-8").read()
    assert out.read_text(encoding="utf-8") == checked_in, "run `make docs` and commit docs/reference/python.md"


EXAMPLES = [(os.path.relpath(p, REPO), line, code) for p in pages() for line, code in blocks(p, "python")]


@pytest.mark.parametrize("page, line, code", EXAMPLES, ids=[f"{p}:{n}" for p, n, _ in EXAMPLES])
def test_every_python_example_runs(page, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__example__"})


def slug(heading):
    """The anchor GitHub and MkDocs give a heading: lower case, punctuation dropped, spaces
    to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_every_internal_link_and_anchor_resolves():
    broken = []
    for page in pages():
        text = re.sub(r"```.*?```", "", open(page, encoding="utf-8").read(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(resolved):
                broken.append(f"{os.path.relpath(page, REPO)}: {target} (no such file)")
            elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
                broken.append(f"{os.path.relpath(page, REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
