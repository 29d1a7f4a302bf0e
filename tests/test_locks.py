"""The locks match what the .in files ask for, and every line carries a hash
(`make lock` regenerates them; an edit to a .in file without it fails here)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)(?:\[[^\]]+\])?==([^\s;]+)", re.M)


def pins(path):
    return {name.lower().replace("_", "-"): version for name, version in PIN.findall((ROOT / path).read_text())}


def wanted(path):
    found = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found |= wanted(line[3:])
        elif line and not line.startswith("-"):
            name = re.split(r"[\[=<>~! ]", line)[0].lower().replace("_", "-")
            found[name] = line.split("==")[1] if "==" in line else None
    return found


def test_each_lock_pins_what_its_in_file_asks_for():
    for source, lock in (("requirements.in", "requirements.txt"), ("requirements-dev.in", "requirements-dev.txt")):
        locked = pins(lock)
        for name, version in wanted(source).items():
            assert name in locked, f"{name} from {source} is not in {lock}: run make lock"
            assert version in (None, locked[name]), f"{name}: {source} says {version}, {lock} has {locked[name]}"


def test_the_dev_lock_has_the_runtime_lock_versions():
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_every_locked_package_has_a_hash():
    for lock in ("requirements.txt", "requirements-dev.txt"):
        entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text())
        unhashed = [e.split()[0] for e in entries if PIN.match(e) and "--hash=sha256:" not in e]
        assert unhashed == [], lock


def test_the_benchs_uvicorn_command_installs_from_the_runtime_lock():
    # bench/RESULTS.md recommends uvicorn with uvloop, httptools and websockets-sansio.
    runtime = pins("requirements.txt")
    assert {"uvicorn", "uvloop", "httptools", "websockets"} <= set(runtime)
