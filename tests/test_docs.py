"""The docs name files, functions and tests that exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FILE_AND_NAMES = re.compile(r"`((?:playground|tests|docs)/[\w/]+\.(?:py|sh))`((?::\s*`\w+`(?:,\s*`\w+`)*)?)")
TEST_REF = re.compile(r"`?(tests/\w+\.py)::(\w+)`?")


def references():
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), start=1):
            for path, names in FILE_AND_NAMES.findall(line):
                yield doc.name, number, path, re.findall(r"`(\w+)`", names)
            for path, name in TEST_REF.findall(line):
                yield doc.name, number, path, [name]


REFERENCES = list(references())


def test_the_docs_name_code_at_all():
    assert len(REFERENCES) > 30


@pytest.mark.parametrize("doc, line, path, names", REFERENCES, ids=[f"{r[0]}:{r[1]}:{r[2]}" for r in REFERENCES])
def test_every_file_and_function_the_docs_mention_exists(doc, line, path, names):
    source = ROOT / path
    assert source.is_file(), f"{doc} line {line}: {path} does not exist"
    text = source.read_text()
    for name in names:
        assert re.search(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*=", text, re.M), \
            f"{doc} line {line}: {path} defines no {name}"


def test_the_figures_architecture_md_says_make_figures_draws_are_the_ones_it_draws():
    script = (ROOT / "docs" / "make_figures.py").read_text()
    drawn = set(re.findall(r'FIGURES / "(\w+)\.png"', script))
    section = (ROOT / "docs" / "architecture.md").read_text().split("## Regenerating the figures")[1]
    named = re.search(r"`docs/figures/([^`]+)\.png`", section).group(1)
    assert set(named.strip("{}").split(",")) == drawn


def test_architecture_md_names_the_runs_make_figures_py_reuses_instead_of_training():
    script = (ROOT / "docs" / "make_figures.py").read_text()
    kept = re.findall(r'ROOT / "(outputs|multirun)" / "([\w-]+)"', script)
    section = (ROOT / "docs" / "architecture.md").read_text().split("## Regenerating the figures")[1]
    assert len(kept) == 2 and all(f"`{top}/{name}`" in section for top, name in kept)


def test_make_figures_trains_its_kept_runs_again_after_an_edit_to_the_model(tmp_path):
    import os
    import runpy

    still_current = runpy.run_path(str(ROOT / "docs" / "make_figures.py"))["still_current"]
    code, record = tmp_path / "model", tmp_path / "run" / "best.pt"
    code.mkdir()
    (code / "attention.py").write_text("x = 1\n")
    assert not still_current(record, code)  # never trained
    record.parent.mkdir()
    record.write_text("")
    os.utime(code / "attention.py", (1_000, 1_000))
    os.utime(record, (2_000, 2_000))
    assert still_current(record, code)  # trained after the code was last written: reused
    os.utime(code / "attention.py", (3_000, 3_000))
    assert not still_current(record, code)  # a learner's edit since: trained again
