"""The documentation tells the truth about the code, cheaply checked.

- every relative link in README.md, BENCHMARKS.md and docs/*.md points to an existing file and,
  with a ``#fragment``, to an existing heading (GitHub's anchor rules);
- every ``hpa-kit COMMAND`` the README names exists;
- every ``--option`` written in docs/cli.md exists in the parser of the command whose section
  it is in, and every option of every command is written in that section;
- every ``hpa_kit.module.name`` the README and docs/*.md write, and every name their code
  imports from hpa_kit, exists;
- every module of the package has its line in docs/development.md;
- README.md stays a front door (under 300 lines);
- the README's marked Python example names only what ``hpa_kit`` exports, and runs as written
  on the synthetic data its marked set-up command makes.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

import hpa_kit
from hpa_kit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CLI_MD = DOCS / "cli.md"
MARKDOWN = [README, ROOT / "BENCHMARKS.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 300

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_COMMAND = re.compile(r"\bhpa-kit ([a-z][a-z-]*)")
_DOTTED = re.compile(r"(?<![\w/.-])hpa_kit(?:\.[A-Za-z_]\w*)+")
_IMPORT = re.compile(r"^from (hpa_kit[\w.]*) import (\([^)]*\)|[^\n]*)", flags=re.MULTILINE)


# --------------------------------------------------------------------------- markdown parsing


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.

    >>> _slug("`hpa-kit demo`: time and scores")
    'hpa-kit-demo-time-and-scores'
    >>> _slug("Training input pipeline throughput (dataset + seed augmentation), CPU")
    'training-input-pipeline-throughput-dataset--seed-augmentation-cpu'
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()  # a link keeps its text
    kept = "".join(
        ch
        for ch in text
        if ch in " -_" or unicodedata.category(ch)[0] in "LN"  # letters, numbers
    )
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def _links(path: Path) -> list[str]:
    targets = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        targets.extend(_LINK.findall(_CODE_SPAN.sub("", line)))
    return targets


def _marked_block(text: str, marker: str) -> str:
    """The fenced block right after the HTML comment ``<!-- docs-test: MARKER -->``."""
    match = re.search(
        rf"<!-- docs-test: {marker} -->\s*\n```[a-z]*\n(.*?)\n```", text, flags=re.DOTALL
    )
    assert match, f"README.md has no fenced block marked <!-- docs-test: {marker} -->"
    return match.group(1)


# --------------------------------------------------------------------------- the parser


def _subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)


def _options(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _cli_sections() -> dict[str, list[str]]:
    """docs/cli.md split at its level-2 headings (code included): heading text -> its lines."""
    sections: dict[str, list[str]] = {"": []}
    current, fenced = "", False
    for line in CLI_MD.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            current = line[3:].strip()
            sections[current] = []
        sections[current].append(line)
    return sections


def _section_command(heading: str) -> str | None:
    match = re.fullmatch(r"`hpa-kit ([a-z-]+)`", heading)
    return match.group(1) if match else None


# --------------------------------------------------------------------------- tests


def test_markdown_helpers_on_literal_text(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A `code` heading: yes\n\n```bash\n## not a heading [x](nowhere.md)\n```\n"
        "See [here](#title) and `[not](a-link.md)`.\n\n## Title\n",
        encoding="utf-8",
    )
    assert _anchors(page) == {"title", "a-code-heading-yes", "title-1"}
    assert _links(page) == ["#title"]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files_and_headings(path):
    broken = []
    for target in _links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"
            assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_readme_names_only_existing_commands():
    commands = set(_subparsers())
    named = set(_COMMAND.findall(README.read_text(encoding="utf-8")))
    assert named, "README.md names no hpa-kit command"
    assert named <= commands, f"README.md names unknown commands: {sorted(named - commands)}"
    assert commands <= named, f"README.md does not name: {sorted(commands - named)}"


def test_cli_reference_options_exist_and_are_complete():
    subparsers = _subparsers()
    top = _options(build_parser())
    every = top.union(*(_options(p) for p in subparsers.values()))
    documented = {}
    for heading, lines in _cli_sections().items():
        text = "\n".join(lines)
        written = set(_OPTION.findall(text))
        command = _section_command(heading)
        allowed = every if command is None else _options(subparsers[command]) | top
        assert written <= allowed, f"docs/cli.md, {heading or 'top'}: {sorted(written - allowed)}"
        if command is not None:  # described = named in a row of the section's table
            rows = "\n".join(line for line in lines if line.startswith("|"))
            documented[command] = set(_OPTION.findall(rows))
    assert set(documented) == set(subparsers), "docs/cli.md needs one section per command"
    for command, parser in subparsers.items():
        missing = _options(parser) - {"--help", "--debug"} - documented[command]
        assert not missing, f"docs/cli.md, hpa-kit {command}: options without a table row {missing}"


def _resolve(dotted: str) -> object:
    """``hpa_kit.a.b.c`` as an object: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for name in parts[end:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def _named_in_docs(text: str) -> set[str]:
    names = set(_DOTTED.findall(text))
    for module, imported in _IMPORT.findall(text):
        for item in imported.strip("()").split("#")[0].replace("\n", " ").split(","):
            if item.strip():
                names.add(f"{module}.{item.split(' as ')[0].strip()}")
    return names


@pytest.mark.parametrize(
    "path", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_hpa_kit_names_in_the_docs_exist(path):
    missing = []
    for dotted in sorted(_named_in_docs(path.read_text(encoding="utf-8"))):
        try:
            _resolve(dotted)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{dotted} ({exc})")
    assert not missing, f"{path.name} names what hpa_kit lacks: {missing}"


def test_every_module_has_a_line_in_the_layout():
    layout = (DOCS / "development.md").read_text(encoding="utf-8")
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "hpa_kit").rglob("*.py"))
    missing = [m for m in modules if f"`{m}`" not in layout]
    assert not missing, f"docs/development.md lacks a line for {missing}"


def test_readme_stays_a_front_door():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_readme_snippet_uses_only_the_top_level_api():
    code = _marked_block(README.read_text(encoding="utf-8"), "snippet")
    tree = ast.parse(code)
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "hpa_kit"
    }
    assert used and used <= set(hpa_kit.__all__), sorted(used - set(hpa_kit.__all__))
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert [alias.name for n in imports for alias in n.names] == ["hpa_kit"]


def test_readme_snippet_runs_as_written(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    text = README.read_text(encoding="utf-8")
    setup = _marked_block(text, "setup").split("#", 1)[0]
    argv = shlex.split(setup)
    assert argv[0] == "hpa-kit", setup
    code = _marked_block(text, "snippet")
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steady on a shared CPU; restored below
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md snippet", "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)
    printed = out.getvalue().splitlines()
    assert (tmp_path / "submission.csv").is_file() and (tmp_path / "run/best/model.pt").is_file()
    assert any(line.startswith("OK: 6 rows") for line in printed), printed
    assert 0.0 <= float(printed[-1]) <= 1.0, printed
