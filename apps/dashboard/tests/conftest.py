"""Browser fixtures: a live daphne (restartable on the same port), the real
feed worker, and Chromium driven by Playwright (Debian's build, no downloads)."""

import json
import sys

import pytest

from conftest import ASGI_APP, PASSWORD, ROOT, free_port, wait_for_port

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class LiveServer:
    """daphne on a fixed port, so a restarted server is the same origin to the page."""

    def __init__(self, processes, **env):
        self.processes = processes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # No WS_ALLOWED_ORIGINS: the page's own origin is allowed whatever the port.
        self.env = {"WS_ALLOWED_ORIGINS": "", "WS_MAX_CONNECTIONS_PER_IP": 50, **env}
        self.proc = None

    def start(self, **env):
        args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), ASGI_APP]
        self.proc = self.processes._start(args, "daphne", self.processes.env(**{**self.env, **env}))
        wait_for_port(self.port, self.proc, log_path=self.proc.log_path)
        return self

    def stop(self):
        self.processes.stop(self.proc)

    def log(self):
        return self.proc.log_path.read_text()


@pytest.fixture
def server(processes):
    return LiveServer(processes).start()


@pytest.fixture
def feed(processes):
    """The real feed: the simulator on its demo clock, fast enough to move at once."""
    return processes.worker(
        FEED_SOURCE="simulator",
        SIMULATOR_CLOCK="demo",
        SIMULATOR_SPEED=60,
        FEED_INTERVAL=0.5,
        FEED_PUBLISH_INTERVAL=0.5,
    )


@pytest.fixture
def browser(processes, monkeypatch):
    """Chromium for one test. Depends on `processes` so it closes before the
    servers stop and the database is flushed."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, and
    # Django refuses ORM calls under a running loop: the test itself is sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def log_in(page, server, username="owner", password=PASSWORD):
    page.goto(server.url + "/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")


def stream_state(page, stream):
    return page.get_attribute(f'[data-conn="{stream}"]', "data-state")


def rows(page):
    """Every quote row as {field: data-value} plus the class list of its last-price cell."""
    return page.eval_on_selector_all(
        "#quotes tbody tr[data-symbol]",
        """trs => trs.map(tr => {
            const row = {};
            tr.querySelectorAll('[data-field]').forEach(td => { row[td.dataset.field] = td.dataset.value; });
            row.lastClasses = [...tr.querySelector('[data-field=last]').classList];
            row.symbolClasses = [...tr.querySelector('[data-field=symbol]').classList];
            return row;
        })""",
    )


def expected_class(row):
    """The colour rule, computed independently from the numbers in the DOM."""
    num = {k: (float(row[k]) if row.get(k) not in (None, "") else None) for k in ("last", "ref", "ceiling", "floor")}
    if num["last"] is None or num["ref"] is None:
        return None
    if num["ceiling"] is not None and num["last"] >= num["ceiling"]:
        return "c-ceil"
    if num["floor"] is not None and num["last"] <= num["floor"]:
        return "c-floor"
    return "c-up" if num["last"] > num["ref"] else "c-down" if num["last"] < num["ref"] else "c-ref"


def colour_of(classes):
    found = [c for c in classes if c.startswith("c-")]
    return found[0] if found else None


def save_metrics(name, values):
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "metrics.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = values
    path.write_text(json.dumps(data, indent=2))
