"""The docs keep up with the code: every setting documented, the README example real."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_in_env_example_and_the_readme():
    source = (ROOT / "stocktracker" / "settings.py").read_text()
    names = set(re.findall(r'_(?:read|positive|choice)\(\s*"([A-Z_]+)"', source))
    names |= set(re.findall(r'env\.str\("([A-Z_]+)"', source))
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    assert names, "no settings found"
    undocumented = sorted(n for n in names if f"{n}=" not in example and f"# {n}=" not in example)
    assert not undocumented, f"missing from .env.example: {undocumented}"
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"missing from the README settings table: {missing}"


def test_the_readme_shows_the_client_example_as_it_is_in_docs():
    example = (ROOT / "docs" / "client_example.py").read_text().rstrip()
    assert example in (ROOT / "README.md").read_text()
