"""The README stays current: its settings table is the one the code generates."""

from pathlib import Path

from tools.settings_doc import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_is_current():
    text = README.read_text()
    block = text.split("<!-- settings:start -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert block.strip() == settings_table().strip(), "run: python -m tools.settings_doc --write"


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
    assert text.startswith("---\n") and "app_file: app.py" in text and "sdk: gradio" in text
