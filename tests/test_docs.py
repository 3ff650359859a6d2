"""The documentation points at things that exist: every relative link (file and heading), every repository path
named in it, every flag its tool tables list; and README stays an entry door."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', ROOT / 'configs' / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
REPO_PATH = re.compile(r'(?<![\w/.])((?:tools|configs|docs|numclip_mm|batch|tests|requirements)/[\w./-]*\w\.'
                       r'(?:py|sh|md|json|yaml|txt|png))\b')


def _ids(page):
    return [str(p.relative_to(ROOT)) for p in page]


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a `#` line in a bash block is no heading)."""
    return re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def anchors(page: Path) -> set:
    return {github_anchor(m.group(1)) for m in re.finditer(r'^#{1,6}\s+(.*)$', _prose(page.read_text()), re.M)}


def test_github_anchor_matches_hand_values():
    assert github_anchor('Device-dependent defaults') == 'device-dependent-defaults'
    assert github_anchor('Which is the default, and why: `scaled`') == 'which-is-the-default-and-why-scaled'
    assert github_anchor('`ray up` / `ray submit`') == 'ray-up--ray-submit'


@pytest.mark.parametrize('page', PAGES, ids=_ids(PAGES))
def test_relative_links_point_to_existing_files_and_headings(page):
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r'[a-z]+://', target) or target.startswith('mailto:'):
            continue
        path, _, anchor = target.partition('#')
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f'{target}: no file {file}')
        elif anchor and file.suffix == '.md' and anchor not in anchors(file):
            broken.append(f'{target}: no heading #{anchor} in {file.relative_to(ROOT)}')
    assert not broken, broken


@pytest.mark.parametrize('page', PAGES, ids=_ids(PAGES))
def test_repository_paths_named_exist(page):
    missing = sorted({p for p in REPO_PATH.findall(page.read_text()) if not (ROOT / p).exists()})
    assert not missing, missing


def test_every_page_is_reachable_from_readme():
    readme = (ROOT / 'README.md').read_text()
    for page in PAGES[1:]:
        assert str(page.relative_to(ROOT)) in readme, page


def test_readme_is_an_entry_door():
    text = (ROOT / 'README.md').read_text()
    assert len(text.splitlines()) < 150
    for command in ('make demo', 'make test', 'tools/train.py', 'tools/test.py', 'numclip-score',
                    'numclip_mm.inference import Predictor', "custom_imports = dict(imports=['numclip_mm.register'])"):
        assert command in text, command
    for history in ('issue ', 'was lent', 'this session'):
        assert history not in text.lower(), history


def _section(text: str, heading: str) -> str:
    found = re.search(rf'^## {re.escape(heading)}\n(.*?)(?=^## |\Z)', text, re.S | re.M)
    assert found, heading
    return found.group(1)


def test_scorer_flags_documented_are_the_parsers():
    from numclip_mm.batch.score import build_parser
    parser_flags = {s for a in build_parser()._actions for s in a.option_strings if s.startswith('--')}
    table = _section((ROOT / 'docs' / 'batch_scoring.md').read_text(), 'Flags')
    documented = set(re.findall(r'(?<![\w-])--[a-z][a-z-]*', table))
    assert documented == parser_flags - {'--help'}


def test_tool_flags_documented_exist():
    table = _section((ROOT / 'docs' / 'training_and_testing.md').read_text(), 'Tools')
    common = (ROOT / 'tools' / 'common.py').read_text()
    rows = [line for line in table.splitlines() if line.startswith('| `tools/')]
    assert len(rows) >= 5
    for row in rows:
        tool_cell, flags_cell = row.split(' | ')[:2]
        tool = re.search(r'tools/[\w/]+\.(?:py|sh)', tool_cell).group(0)
        source = (ROOT / tool).read_text() + (common if tool in ('tools/train.py', 'tools/test.py') else '')
        for flag in re.findall(r'(?<![\w-])--[a-z][a-z-]*', flags_cell):
            assert f"'{flag}'" in source, (tool, flag)
