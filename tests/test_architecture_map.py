"""docs/ARCHITECTURE.md's map names every module of the product, under its own package."""

from __future__ import annotations

import re

from tests.factories import REPO

PACKAGES = ("console", "node", "transport")


def _map_sections() -> dict[str, str]:
    """The map's code block, cut into one text per top-level package."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("```", 2)[1]
    sections: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        top = re.match(r"^(\w+)/", line)
        if top:
            current = top.group(1)
        if current:
            sections[current] = sections.get(current, "") + line + "\n"
    return sections


def test_the_map_names_every_module_and_package_under_its_top_package() -> None:
    sections = _map_sections()
    missing = []
    for package in PACKAGES:
        section = sections.get(package, "")
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            if not re.search(rf"(?<![\w/]){re.escape(path.name)}\b", section):
                missing.append(str(path.relative_to(REPO)))
            for directory in path.relative_to(REPO / package).parents:
                name = directory.name
                if name and not re.search(rf"(?<![\w]){re.escape(name)}/", section):
                    missing.append(f"{package}/{directory}/")
    assert sorted(set(missing)) == [], "modules the map in docs/ARCHITECTURE.md leaves out"


def test_the_map_names_no_module_that_is_gone() -> None:
    sections = _map_sections()
    gone = []
    for package in PACKAGES:
        names = {p.name for p in (REPO / package).rglob("*.py")}
        for named in re.findall(r"(?<![\w/])(\w+\.py)\b", sections.get(package, "")):
            if named not in names:
                gone.append(f"{package}: {named}")
    assert gone == [], "the map names modules the tree does not have"
