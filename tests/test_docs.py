"""The reference documentation matches the code: card keys, CLI options, and links.

Fast: reads Markdown and inspects the card dataclasses and the argparse parser (no JAX
compilation).
"""

import argparse
import dataclasses
import pathlib
import re

import pytest

from ctgep._cli import build_parser
from ctgep._experiment.cards import SECTIONS, Card

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TOP_LEVEL = {"name", "description"}


def _card_rows():
    """(section, key) of every row of docs/cards.md's reference tables."""
    rows = []
    for line in (DOCS / "cards.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 5 and re.fullmatch(r"`\w+`", cells[1]):
            rows.append((cells[0], cells[1].strip("`")))
    return rows


def _schema():
    keys = {("(top)", k) for k in TOP_LEVEL}
    for section, cls in SECTIONS.items():
        keys |= {(section, f.name) for f in dataclasses.fields(cls)}
    return keys


def test_the_card_reference_documents_every_key_exactly_once():
    rows = _card_rows()
    assert rows, "no reference table found in docs/cards.md"
    duplicates = {r for r in rows if rows.count(r) > 1}
    assert not duplicates, f"documented more than once: {sorted(duplicates)}"
    schema = _schema()
    assert {f.name for f in dataclasses.fields(Card)} == TOP_LEVEL | set(SECTIONS)
    assert not schema - set(rows), f"missing from docs/cards.md: {sorted(schema - set(rows))}"
    assert not set(rows) - schema, f"not in the card schema: {sorted(set(rows) - schema)}"


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_the_cli_reference_documents_every_subcommand_and_option():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    subcommands = _subparsers(build_parser())
    assert set(subcommands) >= {"train", "resume", "evaluate", "record", "check"}
    missing = []
    for name, sub in subcommands.items():
        if f"## ctgep {name}" not in text:
            missing.append(f"ctgep {name}")
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and f"`{option}" not in text:
                    missing.append(f"ctgep {name} {option}")
    assert not missing, f"missing from docs/cli.md: {missing}"
    for code in ("0", "1", "2", "130"):
        assert re.search(rf"^\| {code} \|", text, re.M), f"exit status {code} not documented"


def _markdown_files():
    files = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((ROOT / "studies").glob("**/RESULTS.md"))]
    return [f for f in files if f.exists()]


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # an absolute URL, or an anchor in the same page
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_the_docs_exist_and_the_index_links_them():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for page in ("model.md", "rules.md", "theory.md", "cards.md", "cli.md"):
        assert (DOCS / page).exists() and f"]({page})" in index, page


def test_theory_has_the_headings_code_cites():
    headings = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", (DOCS / "theory.md").read_text(encoding="utf-8"), re.M)
    }
    for anchor in ("rbp", "lemma-2", "theorem-1", "ep-estimate", "proposition-5", "theorem-6",
                   "corollary-7", "bptt-converges-to-rbp", "bptt-through-an-adaptive-solver"):
        assert anchor in headings, anchor
