"""The README keeps its promises about itself: its Layout names every Python file under ``scoring/`` (and only those),
its quick start shows the two commands first, and every relative link in it and in ``docs/`` leads somewhere.

The Layout is the first fenced block under ``## Layout``. Each line's first word is a path, relative to the folder
lines above it with less indentation (a word ending in ``/`` is a folder); the rest of the line says what it is for.
When a module is added, split, moved or removed, add, change or remove its line there: the failure says which.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section: up to the next heading of level 2 (fenced blocks skipped)."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    fenced = False
    for i in range(start, len(lines)):
        if lines[i].startswith("```"):
            fenced = not fenced
        elif not fenced and lines[i].startswith("## "):
            return "\n".join(lines[start:i])
    return "\n".join(lines[start:])


def _layout_block(text: str) -> list[str]:
    """The lines of the first fenced block of the README's Layout section."""
    body = _section(text, "## Layout").splitlines()
    opening = next(i for i, line in enumerate(body) if line.startswith("```"))
    closing = next(i for i in range(opening + 1, len(body)) if body[i].startswith("```"))
    return body[opening + 1 : closing]


def _named(block: list[str]) -> dict[str, str]:
    """Path -> the rest of its line, for every path the block names (folders end in ``/``)."""
    named: dict[str, str] = {}
    folders: list[tuple[int, str]] = []
    for line in block:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        word, _, rest = line.strip().partition(" ")
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = (folders[-1][1] if folders else "") + word
        if word.endswith("/"):
            folders.append((indent, path))
        named[path] = rest.strip()
    return named


def _layout_files() -> dict[str, str]:
    return {
        path: what
        for path, what in _named(_layout_block(README.read_text())).items()
        if path.startswith("scoring/") and path.endswith(".py")
    }


def _tree_files() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "scoring").rglob("*.py") if "__pycache__" not in p.parts}


def test_layout_parser_reads_paths_relative_to_the_folder_lines_above():
    block = [
        "scoring/",
        "  a.py        top",
        "  core/       pure",
        "    b.py      in core",
        "  modes/c.py  a path with a folder",
        "  d.py        back at the top",
        "conf/jobs/    not scoring",
    ]
    assert _named(block) == {
        "scoring/": "",
        "scoring/a.py": "top",
        "scoring/core/": "pure",
        "scoring/core/b.py": "in core",
        "scoring/modes/c.py": "a path with a folder",
        "scoring/d.py": "back at the top",
        "conf/jobs/": "not scoring",
    }


def test_readme_layout_names_every_python_file_under_scoring():
    missing = sorted(_tree_files() - set(_layout_files()))
    assert not missing, (
        "README.md, ## Layout: add one line for each of these files, under its folder, saying what it is for: "
        + ", ".join(missing)
    )


def test_every_file_the_readme_layout_names_exists():
    gone = sorted(set(_layout_files()) - _tree_files())
    assert not gone, "README.md, ## Layout names files that do not exist: remove or rename their lines: " + ", ".join(
        gone
    )


def test_every_file_in_the_readme_layout_says_what_it_is_for():
    silent = sorted(path for path, what in _layout_files().items() if not what)
    assert not silent, "README.md, ## Layout: say what these files are for, on their line: " + ", ".join(silent)


def test_readme_layout_describes_the_layers():
    text = " ".join(_section(README.read_text(), "## Layout").split())  # sentences may wrap anywhere
    assert "`core` <- `engine` <- the runners and `modes` <- `cli`, `deploy` and `tools`" in text
    assert "never import `engine`, `modes`, the runners or the CLI" in text


def test_readme_first_screen_is_the_quick_start_with_the_two_commands():
    lines = README.read_text().splitlines()
    first_screen = "\n".join(lines[:40])
    assert "## Quick start" in first_screen
    assert re.search(r"^make demo\b", first_screen, re.MULTILINE), "the quick start names `make demo` (as before)"
    assert re.search(r"^make test\b.*\.ci/run calls this", first_screen, re.MULTILINE), (
        "the quick start names `make test`, the command .ci/run calls"
    )
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces as ``-``."""
    text = unicodedata.normalize("NFKC", heading.strip()).lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_slug_follows_github_for_headings_with_punctuation():
    assert _slug("Real-time Mode (not offered)") == "real-time-mode-not-offered"
    assert _slug("Where a run's seconds go, and what was cut") == "where-a-runs-seconds-go-and-what-was-cut"
    assert _slug("Triton sidecars: the `triton` backend") == "triton-sidecars-the-triton-backend"


def test_every_relative_link_in_the_readme_and_docs_leads_to_a_file_and_heading_that_exist():
    broken = []
    for page in _markdown_pages():
        fenced = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                continue
            for target in LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                linked = (page.parent / file_part).resolve() if file_part else page
                where = f"{page.relative_to(ROOT)}:{number}: {target}"
                if not linked.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                    broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


PATH_REF = re.compile(r"`(scoring/(?:[\w.-]+/)*(?:[\w-]+\.\w+)?)`")  # a folder (ends in /) or a file (has a suffix)
DOTTED_REF = re.compile(r"`(scoring(?:\.[A-Za-z_]\w*)+)")
BUILD_OUTPUTS = ("scoring/jvm/target",)  # made by `make jvm`, ignored by git


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def test_every_scoring_path_the_readme_and_docs_name_exists():
    stale = [
        f"{page.relative_to(ROOT)}: {ref}"
        for page in _markdown_pages()
        for ref in PATH_REF.findall(page.read_text())
        if not ref.startswith(BUILD_OUTPUTS) and not (ROOT / ref).exists()
    ]
    assert not stale, "the README or docs name paths that no longer exist (a module moved?):\n" + "\n".join(stale)


def test_every_scoring_name_the_readme_and_docs_give_is_defined_where_they_say():
    stale = []
    for page in _markdown_pages():
        for ref in DOTTED_REF.findall(page.read_text()):
            parts = ref.split(".")
            found = next(
                ((i, path) for i in range(len(parts), 0, -1) if (path := _module_file(parts[:i])) is not None), None
            )
            if found is None or (found[0] < len(parts) and parts[found[0]] not in _top_level_names(found[1])):
                stale.append(f"{page.relative_to(ROOT)}: {ref}")
    assert not stale, "the README or docs name modules or functions that are not there (moved?):\n" + "\n".join(stale)
