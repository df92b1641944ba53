"""The documentation against the tree: README budget, layout section, links, pages, commands."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PACKAGE = ROOT / "src" / "lenet"
INTERNALS = DOCS / "internals.md"
README_BUDGET = 12_000  # characters (issue 11: a README a newcomer reads in ten minutes)
PAGES = [
    "data",
    "training",
    "predict",
    "read",
    "serve",
    "family",
    "distributed",
    "benchmarks",
    "internals",
]
NAME = re.compile(r"^[\w.-]+(\.py|\.c|/)$")  # a file or folder name in the layout tree


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    """The text with fenced code blocks and inline code removed (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M):
        s = slug(m.group(1))
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def layout_section() -> str:
    """The code block of the '## Layout' section of docs/internals.md."""
    text = INTERNALS.read_text(encoding="utf-8")
    m = re.search(r"^## Layout\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert m, "docs/internals.md needs a '## Layout' section"
    block = re.search(r"^```\n(.*?)^```", m.group(1), flags=re.M | re.S)
    assert block, "the Layout section needs a code block with the tree"
    return block.group(1)


def layout_paths() -> set[str]:
    """Paths (relative to src/lenet, folders ending in '/') named by the layout tree.

    A line's leading run of names are entries; its indentation says which folder they are in.
    """
    lines = [ln for ln in layout_section().splitlines() if ln.strip()]
    assert lines[0].strip() == "src/lenet/", "the tree starts at src/lenet/"
    stack: list[tuple[int, str]] = []  # (indent, folder path)
    out = set()
    for line in lines[1:]:
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = stack[-1][1] if stack else ""
        for token in line.split():
            if not NAME.match(token):
                break
            out.add(prefix + token)
            if token.endswith("/"):
                stack.append((indent, prefix + token))
    return out


def tree_paths() -> set[str]:
    """What the layout must name: every module (``__init__.py`` files too), C file and folder."""
    out = set()
    for path in PACKAGE.rglob("*"):
        rel = path.relative_to(PACKAGE)
        if "__pycache__" in rel.parts:
            continue
        parent = rel.parent
        if parent != Path(".") and not (PACKAGE / parent / "__init__.py").exists():
            continue  # files inside data folders (static/, weights/) are not modules
        if path.is_dir():
            out.add(rel.as_posix() + "/")
        elif path.suffix in (".py", ".c"):
            out.add(rel.as_posix())
    return out


def test_readme_within_budget():
    n = len(README.read_text(encoding="utf-8"))
    assert n <= README_BUDGET, f"README.md is {n} characters; the budget is {README_BUDGET}"


def test_layout_names_every_module():
    missing = sorted(tree_paths() - layout_paths())
    assert not missing, f"docs/internals.md's Layout does not name: {missing}"


def test_layout_names_nothing_that_is_gone():
    stale = sorted(layout_paths() - tree_paths())
    assert not stale, f"docs/internals.md's Layout names what src/lenet lacks: {stale}"


@pytest.mark.parametrize("page", PAGES)
def test_docs_page_exists_and_is_linked_from_readme(page):
    assert (DOCS / f"{page}.md").is_file(), f"docs/{page}.md is missing"
    assert f"](docs/{page}.md" in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(md):
    bad = []
    for target in re.findall(
        r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(md.read_text("utf-8"))
    ):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (md.parent / path_part).resolve() if path_part else md
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor})")
    assert not bad, f"{md.relative_to(ROOT)}: broken links: {bad}"


def readme_commands() -> list[str]:
    """The commands of the README's first bash block (the quick start), comments removed."""
    block = re.search(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    assert block
    return [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_commands_are_the_scripts_and_ci_runs_the_test_command():
    commands = readme_commands()
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    ci = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert ci[-1].removeprefix("exec ") == commands[1], "CI must run the README's test command"


def test_scripts_parse_and_share_the_environment_logic():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    scripts = ROOT / "scripts"
    for name in ("_env.sh", "quickstart.sh", "test.sh"):
        subprocess.run([bash, "-n", str(scripts / name)], check=True)
    for name in ("quickstart.sh", "test.sh"):
        assert '_env.sh"' in (scripts / name).read_text(encoding="utf-8")
    # --python is taken out of the arguments; the rest are left for pytest.
    out = subprocess.run(
        [
            bash,
            "-c",
            ". scripts/_env.sh; env_parse_args -q --python /x/py -k a; "
            'echo "$ENV_PYTHON|${ENV_REST[*]}"',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "/x/py|-q -k a"


def test_venv_is_git_ignored():
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run([git, "check-ignore", "-q", ".venv/"], cwd=ROOT)
    assert r.returncode == 0, ".venv/ must be git-ignored"


# Names issue 11 retired. Docs may still name them, but only in a sentence that says they are old.
RETIRED = re.compile(r"lenet\.speed|optimize_model|SeedLeNet5|lenet1998\.py|--recipe seed")
OLD_MARKERS = re.compile(
    r"deprecated|earlier|before issue 11|\bold(er)?\b|\bformer(ly)?\b|then named|was called",
    re.I,
)


def sentences(text: str) -> list[str]:
    """Table rows one by one; other paragraphs split into sentences."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        rows = [ln for ln in para.splitlines() if ln.lstrip().startswith("|")]
        if rows:
            out += rows
            para = "\n".join(ln for ln in para.splitlines() if not ln.lstrip().startswith("|"))
        out += re.split(r"(?<=[.!?])\s+(?=[A-Z`(*])", para)
    return out


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_retired_names_only_as_history(md):
    bad = [
        " ".join(s.split())
        for s in sentences(md.read_text(encoding="utf-8"))
        if RETIRED.search(s) and not OLD_MARKERS.search(s)
    ]
    assert not bad, f"{md.relative_to(ROOT)} names a retired name as current: {bad}"


def test_retired_names_check_catches_current_use():
    text = "Run `lenet train --recipe seed`.\n\nThe earlier code had `lenet.speed`.\n\n"
    text += "| a | optimize_model |"
    flagged = [s for s in sentences(text) if RETIRED.search(s) and not OLD_MARKERS.search(s)]
    assert flagged == ["Run `lenet train --recipe seed`.", "| a | optimize_model |"]
