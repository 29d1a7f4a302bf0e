#!/usr/bin/env python3
"""Install the Debian packages the test suite needs, when they are missing.

    python scripts/system_packages.py            # everything `make test` uses
    python scripts/system_packages.py redis-server postgresql

Quiet and quick (one dpkg-query call, ~30 ms) when everything is present. Otherwise runs
apt-get as root (or says which command to run), then stops the services Debian
starts on install: the tests run their own servers on free loopback ports.
"""

import os
import subprocess
import sys

# Debian package -> what needs it.
TEST_PACKAGES = {
    "redis-server": "scripts/with_services.py (a throwaway Redis)",
    "postgresql": "scripts/with_services.py (a throwaway cluster)",
    "chromium": "the browser tests (Playwright drives /usr/bin/chromium)",
    "nginx": "tests/test_nginx.py (the deploy/ recipe)",
    "openssl": "tests/test_nginx.py (a self-signed certificate)",
    "nodejs": "tests/test_asyncapi_cli.py (the official AsyncAPI CLI)",
    "npm": "tests/test_asyncapi_cli.py (installs the pinned CLI)",
    "iproute2": "apps/streams/tests/partition.py (`ip rule`: a database host that vanishes)",
}
# Packages whose install starts a system service that would hold a port.
SERVICES = {"redis-server": "redis-server", "postgresql": "postgresql", "nginx": "nginx"}


def log(message):
    print(f"[packages] {message}", file=sys.stderr, flush=True)


def installed_names():
    """Every installed package, and every name an installed package provides
    (nodesource's `nodejs` provides `npm`, for instance)."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status}\t${Package}\t${Provides}\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in result.stdout.splitlines():
        status, package, provides = [*line.split("\t"), "", ""][:3]
        if status == "installed":
            names.add(package)
            names.update(entry.split()[0] for entry in provides.split(",") if entry.strip())
    return names


def missing(packages):
    have = installed_names()
    return [package for package in packages if package not in have]


def ensure(packages):
    """Install whichever of `packages` dpkg does not have; exit with the command to
    run when that needs root."""
    need = missing(packages)
    if not need:
        return
    if os.geteuid() != 0:
        sys.exit(f"[packages] missing Debian packages: {' '.join(need)}. Run: sudo apt-get install {' '.join(need)}")
    log(f"installing {' '.join(need)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    for package in need:
        if package in SERVICES:
            subprocess.run(
                ["service", SERVICES[package], "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
    log(f"installed {' '.join(need)}")


if __name__ == "__main__":
    ensure(sys.argv[1:] or list(TEST_PACKAGES))
