"""The documented nginx recipe (deploy/nginx-site.conf), run for real: Debian's
nginx on loopback with a self-signed certificate in front of two daphne
processes, clients connecting with TLS."""

import asyncio
import json
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import httpx
import pytest
import websockets

from apps.accounts.models import ApiToken, UserLimits
from conftest import ROOT, free_port, wait_for_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def tls_proxy(processes, tmp_path):
    """nginx with the repo's site config on free ports, in front of two daphne processes."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    env = {"WS_TRUSTED_PROXIES": "127.0.0.1", "WS_MAX_CONNECTIONS_PER_IP": "2"}
    webs = [processes.daphne(**env), processes.daphne(**env)]
    https_port, http_port = free_port(), free_port()
    site = (ROOT / "deploy" / "nginx-site.conf").read_text()
    for old, new in {
        "server 127.0.0.1:8001;": f"server 127.0.0.1:{webs[0].port};",
        "server 127.0.0.1:8002;": f"server 127.0.0.1:{webs[1].port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "/etc/ssl/stocktracker/fullchain.pem": str(cert),
        "/etc/ssl/stocktracker/privkey.pem": str(key),
        "/var/log/nginx/stocktracker.access.log": str(tmp_path / "access.log"),
        "/srv/stocktracker/staticfiles/": str(ROOT / "staticfiles") + "/",
    }.items():
        assert old in site, f"deploy/nginx-site.conf no longer contains {old!r}"
        site = site.replace(old, new)
    temp = tmp_path / "nginx-temp"
    temp.mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"""
daemon off;
user root;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    {(ROOT / "deploy" / "nginx-http.conf").read_text()}
    {site}
}}
"""
    )
    proc = processes._start([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], "nginx", None)
    wait_for_port(https_port, proc, log_path=proc.log_path)
    context = ssl.create_default_context(cafile=str(cert))
    return {"https": https_port, "http": http_port, "ssl": context, "access_log": tmp_path / "access.log"}


@pytest.fixture
def api_token(owner):
    limits = UserLimits.for_user(owner)
    limits.max_connections = 50
    limits.save()
    _, raw = ApiToken.issue(owner, label="nginx", max_connections=50)
    return raw


async def connect(proxy, path, **headers):
    ws = await websockets.connect(
        f"wss://localhost:{proxy['https']}{path}", ssl=proxy["ssl"], additional_headers=headers, open_timeout=10
    )
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 10))


def test_a_token_client_streams_through_nginx_over_tls(tls_proxy, api_token):
    async def main():
        ws, first = await connect(tls_proxy, "/ws/index", Authorization=f"Bearer {api_token}")
        await ws.close()
        return first

    welcome = asyncio.run(main())
    assert welcome["type"] == "welcome" and welcome["stream"] == "index"


def test_a_client_written_forwarded_for_does_not_dodge_the_per_ip_limit(tls_proxy, api_token):
    async def main():
        sockets, frames = [], []
        for fake in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            ws, first = await connect(
                tls_proxy, "/ws/market", Authorization=f"Bearer {api_token}", **{"X-Forwarded-For": fake}
            )
            sockets.append(ws)
            frames.append(first)
        third = sockets[-1]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(third.recv(), 10)
        for ws in sockets:
            await ws.close()
        return frames, closed.value.rcvd.code

    frames, code = asyncio.run(main())
    assert [f["type"] for f in frames] == ["welcome", "welcome", "error"]
    assert code == 4100


def test_plain_http_redirects_to_https_and_probes_answer_through_tls(tls_proxy):
    request = urllib.request.Request(f"http://127.0.0.1:{tls_proxy['http']}/healthz", method="GET")
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(request, timeout=5)
    assert redirect.value.code == 301
    assert redirect.value.headers["Location"].startswith("https://")
    url = f"https://localhost:{tls_proxy['https']}/healthz"
    with urllib.request.urlopen(url, context=tls_proxy["ssl"], timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}


def test_metrics_are_not_served_through_the_public_proxy(tls_proxy):
    """Daphne sees nginx's loopback address, which METRICS_ALLOWED_IPS allows by
    default: the proxy itself must refuse /metrics."""
    url = f"https://localhost:{tls_proxy['https']}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, context=tls_proxy["ssl"], timeout=5)
    assert refused.value.code == 403


def test_status_is_served_to_this_machine_only_and_readyz_to_anyone(tls_proxy):
    """The client's address as nginx sees it decides: 127.0.0.1 (this machine) gets the
    app's /status, any other address (here 127.0.0.2, as an outside client) gets 403."""
    url = f"https://localhost:{tls_proxy['https']}"
    with httpx.Client(verify=tls_proxy["ssl"], timeout=10) as local:
        status = local.get(f"{url}/status")
        assert status.status_code in (200, 503) and "database" in status.json()["checks"]
    outside = httpx.HTTPTransport(verify=tls_proxy["ssl"], local_address="127.0.0.2")
    with httpx.Client(transport=outside, timeout=10) as client:
        assert client.get(f"{url}/status").status_code == 403
        ready = client.get(f"{url}/readyz")
        assert ready.status_code == 200 and "database" not in ready.json()["checks"]


def test_a_token_in_the_query_string_stays_out_of_the_access_log(tls_proxy, api_token):
    async def main():
        ws, first = await connect(tls_proxy, f"/ws/foreign?token={api_token}")
        await ws.close()
        return first

    assert asyncio.run(main())["type"] == "welcome"
    log = Path(tls_proxy["access_log"]).read_text()
    assert "/ws/foreign" in log
    assert api_token not in log and "token=" not in log


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
