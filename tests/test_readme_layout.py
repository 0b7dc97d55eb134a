"""README's Layout section names every module of src/ where it lives, and nothing else."""

import re

from tests.conftest import REPO_ROOT


def layout_entries() -> set[str]:
    """Paths named in the Layout block: leading `*.py` / `dir/` tokens, nested by indentation."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", readme, re.S).group(1)
    stack: list[tuple[int, str]] = []
    entries = set()
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        stack = [(i, d) for i, d in stack if i < indent]
        prefix = "".join(d for _, d in stack)
        for token in line.split():
            if not token.endswith((".py", "/")):
                break
            entries.add(prefix + token)
            if token.endswith("/"):
                stack.append((indent, token))
    return entries


def test_readme_layout_matches_the_tree():
    entries = layout_entries()
    modules = {
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "src").rglob("*.py")
        if path.name != "__init__.py" and "assets" not in path.parts
    }
    named = {e for e in entries if e.endswith(".py")}
    assert modules - named == set(), "modules missing from README's Layout"
    assert named - modules == set(), "modules README's Layout names that do not exist"
    assert [e for e in entries - named if not (REPO_ROOT / e).is_dir()] == []
