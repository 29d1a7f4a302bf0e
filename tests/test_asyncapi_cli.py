"""The official AsyncAPI CLI reads docs/asyncapi.yaml whole: no error, no warning,
not even an info or hint.

The CLI is pinned by tools/asyncapi-cli/package-lock.json and installed once per
lock into a cache folder (npm ci, no install scripts: nothing is downloaded
beyond the registry's packages); nodejs and npm come from
scripts/system_packages.py, which `make test` runs.
"""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "asyncapi-cli"


@pytest.fixture(scope="module")
def asyncapi():
    lock = (TOOL / "package-lock.json").read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stocktracker"
    home = cache / f"asyncapi-cli-{hashlib.sha256(lock).hexdigest()[:16]}"
    cli = home / "node_modules" / ".bin" / "asyncapi"
    if not cli.exists():
        partial = home.with_name(home.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(TOOL / name, partial / name)
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=partial,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        partial.rename(home)  # only a complete install is ever used
    # Usage analytics off (and no notice about them), without touching ~/.asyncapi-analytics.
    settings = home / "analytics.json"
    settings.write_text(json.dumps({"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "tests"}))
    env = {**os.environ, "CI": "true", "ASYNCAPI_METRICS_CONFIG_PATH": str(settings)}

    def run(*args):
        return subprocess.run([str(cli), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    return run


def test_asyncapi_validate_reports_nothing(asyncapi):
    result = asyncapi("validate", "docs/asyncapi.yaml", "--fail-severity", "hint", "--diagnostics-format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    diagnostics = json.loads(result.stdout[result.stdout.index("[") :])
    assert diagnostics == []
    assert "is valid" in result.stdout and "don't have governance issues" in result.stdout
