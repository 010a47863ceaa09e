"""The README is a user's guide that stays true: its CLI table matches the typer app, its two newcomer
commands exist in the Makefile, its links resolve, and it cites no tracker issue a user cannot see."""

import re
from pathlib import Path

import typer.main

import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    """The text of the `## title` section, up to the next second-level heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def cli_table() -> dict[str, str]:
    """Command name -> its 'main options' cell, from the table under '## The CLI at a glance'."""
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|[^|]*(?:\\\|[^|]*)*\|(.*)\|\s*$", section("The CLI at a glance"), re.M)
    return {name: options for name, options in rows}


def app_commands() -> dict:
    """The commands the typer app registers, as click sees them (the names `--help` lists)."""
    return typer.main.get_command(cli.app).commands


def test_readme_cites_no_issue_numbers():
    cited = re.findall(r"\bissues?\s*#?\d+", README, re.I)
    assert not cited, f"README cites tracker issues a user cannot see: {cited}"


def test_two_newcomer_commands_lead_and_exist_in_the_makefile():
    block = re.search(r"```bash\n(.*?)```", section("Two commands"), re.S)
    assert block, "the 'Two commands' section has no bash block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no '{target}' target"
    demo_recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "cli.py demo" in demo_recipe and "demo" in app_commands()


def test_cli_table_lists_exactly_the_apps_commands():
    table, registered = set(cli_table()), set(app_commands())
    assert table, "no command rows found in the CLI table"
    assert table - registered == set(), f"in the README's CLI table but not in cli.py: {sorted(table - registered)}"
    assert registered - table == set(), f"in cli.py but missing from the README's CLI table: {sorted(registered - table)}"


def test_cli_table_options_exist_on_their_command():
    commands = app_commands()
    for name, cell in cli_table().items():
        declared = {opt for param in commands[name].params for opt in (*param.opts, *param.secondary_opts)}
        for option in (opt for code in re.findall(r"`([^`]*)`", cell) for opt in re.findall(r"--[a-z0-9-]+", code)):
            assert option in declared, f"README lists {option} for `{name}`, which `cli.py {name} --help` lacks"


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#+ (.+)$", markdown, re.M)}


def test_relative_links_resolve():
    for target, anchor in re.findall(r"\]\(([^)#:]+)(?:#([^)]*))?\)", README):
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_anchors((REPO / target).read_text()), f"README links to {target}#{anchor}: no such heading"


def test_no_heading_appears_twice():
    # A merge once left two "Using a store from Python" headings, the first empty; anchors then point at it.
    headings = [line for line in README.splitlines() if line.startswith("#")]
    assert len(headings) == len(set(headings)), sorted(h for h in headings if headings.count(h) > 1)
