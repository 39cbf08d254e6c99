"""The documentation stays true: the README's links resolve, the pages under
docs/ build with `mkdocs build --strict` (no broken link or anchor), and what
the pages show is checked against what ships: the deployment snippets
against the files in examples/, the graceshell.yml reference against
`graceshell check`, the options of `graceshell run` against its --help, and
the event names against the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"


def fenced_blocks(markdown: str, language: str | None = None) -> list[str]:
    """The text of each ``` block (of `language`, when given)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL)
    return [body for lang, body in blocks if language is None or lang == language]


def sections(markdown: str) -> dict[str, str]:
    """`## Heading` -> its text, up to the next heading of that level."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_mkdocs_builds_the_pages_strictly(tmp_path: Path) -> None:
    """mkdocs.yml's validation turns every broken link and anchor into a warning, and --strict fails on one."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "deploying" / "index.html").exists()


def test_every_page_is_in_the_nav_and_linked_from_the_readme() -> None:
    import yaml

    nav = [next(iter(entry.values())) for entry in yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]]
    pages = sorted(path.name for path in DOCS.glob("*.md"))
    assert sorted(nav) == pages
    readme = (ROOT / "README.md").read_text()
    assert not [page for page in pages if page != "index.md" and f"(docs/{page})" not in readme]


def test_the_readmes_relative_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = [target for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme) if "://" not in target]
    assert targets
    assert not [target for target in targets if not (ROOT / target).exists()]


def test_the_readmes_two_commands_are_the_makefiles() -> None:
    readme = (ROOT / "README.md").read_text()
    (commands,) = fenced_blocks(sections(readme)["The two commands"], "sh")
    assert [line.split("#")[0].strip() for line in commands.splitlines()] == ["make demo", "make test"]
    assert re.search(r"^demo:", (ROOT / "Makefile").read_text(), re.MULTILINE)


DEPLOY_EXAMPLES = {  # docs/deploying.md's section -> the file its snippet comes from
    "Heroku": "Procfile.frameworks", "Docker (and ECS)": "Dockerfile", "Kubernetes": "kubernetes/worker.yaml",
    "systemd": "systemd/graceshell-worker.service", "Fly.io": "fly.toml", "Render": "render.yaml",
}


@pytest.mark.parametrize("section", sorted(DEPLOY_EXAMPLES))
def test_each_deploy_snippet_is_in_its_example_file(section: str) -> None:
    """Every line a deploy section shows is a line of the example it links, which
    tests/test_examples.py checks against the platform's deadline. A Procfile
    line is compared by its command (the example names the process after its framework)."""
    (snippet,) = fenced_blocks(sections((DOCS / "deploying.md").read_text())[section])
    example = EXAMPLES / DEPLOY_EXAMPLES[section]
    shipped = {line.strip() for line in example.read_text().splitlines()}
    if example.name.startswith("Procfile"):
        shipped |= {line.split(":", 1)[1].strip() for line in shipped if ":" in line}
        wanted = [line.split(":", 1)[1].strip() for line in snippet.splitlines() if line.strip()]
    else:
        wanted = [line.strip() for line in snippet.splitlines() if line.strip()]
    assert not [line for line in wanted if line not in shipped], f"not in examples/{DEPLOY_EXAMPLES[section]}"


def test_the_readmes_deploy_example_is_the_dockerfiles() -> None:
    (snippet,) = fenced_blocks(sections((ROOT / "README.md").read_text())["Deploying"], "dockerfile")
    shipped = {line.strip() for line in (EXAMPLES / "Dockerfile").read_text().splitlines()}
    assert not [line for line in snippet.splitlines() if line.strip() not in shipped]


def test_the_graceshell_yml_reference_is_read_as_documented(tmp_path: Path) -> None:
    """The annotated graceshell.yml of docs/config.md, every key in it, passes `check`."""
    (config,) = fenced_blocks(sections((DOCS / "config.md").read_text())["graceshell.yml"], "yaml")
    (tmp_path / "graceshell.yml").write_text(config)
    (tmp_path / "Procfile").write_text("worker: sleep 60\n")
    result = run_cli("check", "--json", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["processes"]
    assert not entry["errors"], entry["errors"]
    assert entry["preset"]["value"] == "celery" and entry["budget_s"]["value"] == 20.0
    assert [step["signal"] for step in entry["ladder"]["value"]] == ["TERM", "QUIT", "KILL"]


def test_the_run_options_table_matches_run_help() -> None:
    """docs/run.md's table names each long option of `graceshell run --help`, and no other."""
    table = (DOCS / "run.md").read_text().split("\n## ")[0]  # the options come before the first section
    documented = set(re.findall(r"^\| `(?:-\w, )?(--[a-z-]+)", table, re.MULTILINE))
    helped = set(re.findall(r"^\s+(?:-\w, )?(--[a-z-]+)", run_cli("run", "--help").stdout, re.MULTILINE))
    assert documented and documented == helped - {"--help"}


def test_the_events_named_in_the_logs_page_exist() -> None:
    """Each `graceshell.*` event docs/logs.md names is logged somewhere in graceshell's code."""
    source = "\n".join(path.read_text() for path in (ROOT / "graceshell").rglob("*.py"))
    named = set(re.findall(r"`(graceshell\.[a-z_.]+)`", (DOCS / "logs.md").read_text()))
    assert named
    assert not [event for event in sorted(named) if f'"{event}"' not in source]


def documented_command_lines() -> list[tuple[str, str]]:
    """Every concrete `graceshell run|drill ... -- COMMAND` line the README and
    the pages show (in a code block or inline), as (page, line); usage
    synopses (OPTIONS, COMMAND, <framework>) are not command lines."""
    found = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = page.read_text()
        candidates = re.findall(r"`(graceshell (?:run|drill) [^`\n]*)`", text)
        candidates += [m.group(1) for block in fenced_blocks(text) for line in block.splitlines()
                       if (m := re.search(r"(graceshell (?:run|drill) .*)$", line))]
        for line in candidates:
            line = re.sub(r"\s+#.*$", "", line).strip().rstrip('"')
            if " -- " in line and not re.search(r"OPTIONS|COMMAND|CMD|<", line):
                found.append((page.name, line))
    return found


@pytest.mark.parametrize("page, line", documented_command_lines())
def test_every_documented_command_line_passes_check(page: str, line: str) -> None:
    """What the docs tell a user to type is accepted as written: the same
    options, given to `graceshell check`, raise no error."""
    import shlex

    words = shlex.split(line)
    options, command = words[2:words.index("--")], words[words.index("--"):]
    proc = run_cli("check", "--json", *options, *command)
    assert proc.returncode == 0, f"{page}: {line}\n{proc.stderr}"
    (process,) = json.loads(proc.stdout)["processes"]
    assert process["errors"] == [], f"{page}: {line}"
