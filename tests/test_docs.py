"""The documentation points where things are: every relative link of the READMEs and docs/ resolves (file and
heading), and the top README's map of the package names every module of hnlm/ and nothing else."""

import re
from pathlib import Path

import pytest

from hnlm.paths import PROJECT_ROOT

DOCUMENTS = ["README.md", "docs/usage.md", "results/ml-100k/README.md", "outputs/README.md", "bench/README.md",
             "tests/README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_resolves(document):
    source = PROJECT_ROOT / document
    for target in LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        assert path.exists(), f"{document}: {target} does not exist"
        if anchor:
            assert anchor in anchors(path), f"{document}: {target} names no heading of {file or document}"


def test_the_map_of_the_package_names_every_module():
    text = (PROJECT_ROOT / "README.md").read_text()
    block = text.split("## Map of the package")[1].split("```text\n")[1].split("```")[0]
    mapped, folder = set(), ""
    for line in block.splitlines():
        head = line.split()[0] if line and not line.startswith(" ") else None
        if head:
            folder = "" if head.startswith("hnlm/") else head
        mapped |= {folder + name for name in re.findall(r"\w+\.py", line)}
    modules = {str(p.relative_to(PROJECT_ROOT / "hnlm")) for p in (PROJECT_ROOT / "hnlm").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")} | {"methods/__init__.py"}
    assert not modules - mapped, f"modules missing from the README's map: {sorted(modules - mapped)}"
    assert not mapped - modules, f"the README's map names modules that do not exist: {sorted(mapped - modules)}"
