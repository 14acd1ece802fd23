"""End to end: a real ``panel serve dashboards/app.py``, a real broker, headless Chromium.

The server reaches RabbitMQ through a small TCP proxy owned by the test, so the test can take
the broker "away" from the dashboard (and give it back) without touching the shared broker.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dashboards.synth import verdict_batch
from phoenix.schema import (
    ARROW_CONTENT_TYPE,
    NDJSON_CONTENT_TYPE,
    alert_routing_key,
    encode_table,
    eve_alerts,
    verdict_routing_key,
)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
AMQP_URL = os.environ.get("PHOENIX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
# Screenshots land in PHOENIX_SCREENSHOT_DIR (e.g. docs/img to refresh the README's); by default
# in a temporary folder, so a test run never rewrites tracked files.
IMG = Path(os.environ.get("PHOENIX_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="phoenix-screens-"))

pytestmark = [pytest.mark.broker, pytest.mark.browser]


def _broker_hostport() -> tuple[str, int]:
    p = pika.URLParameters(AMQP_URL)
    return p.host, p.port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    """Forwards a local port to the broker; ``stop()`` drops every connection, ``start()`` resumes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def stop(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(); close alone does not
            except OSError:
                pass
            ls.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._socks.clear()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


@pytest.fixture(scope="module")
def broker() -> None:
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except pika.exceptions.AMQPError as exc:
        pytest.skip(f"no RabbitMQ at {pika.URLParameters(AMQP_URL).host}: {exc!r}")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    root = tmp_path_factory.mktemp("archive")
    (root / "2026-01-01").mkdir()
    # An hour ago: inside the History page's default time range (the last 24 hours).
    t = verdict_batch(1000, worker="hist", devices=5, malicious_every=10, now_ns=time.time_ns() - 3600 * 10**9)
    pq.write_table(t.slice(0, 600), root / "2026-01-01" / "verdicts-hist-0.parquet")
    pq.write_table(t.slice(600), root / "verdicts-hist-1.parquet")
    (root / "verdicts-hist-2.parquet").write_bytes(b"PAR1 still being written")
    return root, t


@pytest.fixture(scope="module")
def server(broker: None, archive: tuple[Path, pa.Table], tmp_path_factory: pytest.TempPathFactory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed")
    pytest.importorskip("playwright.sync_api")
    exchange = f"phoenix.test.{uuid.uuid4().hex[:10]}"
    proxy = TcpProxy(_broker_hostport())
    proxy.start()
    user_url = pika.URLParameters(AMQP_URL)
    creds = user_url.credentials
    port = _free_port()
    env = dict(os.environ,
               PHOENIX_AMQP_URL=f"amqp://{creds.username}:{creds.password}@127.0.0.1:{proxy.port}/%2F",
               PHOENIX_ALERTS_EXCHANGE=exchange, PHOENIX_ARCHIVE_DIR=str(archive[0]),
               PHOENIX_MODEL_PATH=str(tmp_path_factory.mktemp("model") / "missing.pt"),
               PHOENIX_DASHBOARD_REFRESH_MS="200")
    log = tmp_path_factory.mktemp("log") / "panel.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "panel", "serve", str(ROOT / "dashboards" / "app.py"), "--port", str(port),
             "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}",
             "--setup", str(ROOT / "dashboards" / "setup.py")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"panel serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield {"url": f"http://127.0.0.1:{port}/app", "exchange": exchange, "proxy": proxy, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        proxy.stop()
        try:
            conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            conn.channel().exchange_delete(exchange)
            conn.close()
        except pika.exceptions.AMQPError:
            pass


@pytest.fixture(scope="module")
def page(server: dict):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1250})
        pg.set_default_timeout(20_000)
        pg.goto(server["url"])
        pg.wait_for_selector('.phx-card[data-key="total"]')
        yield pg
        browser.close()


def _publish(exchange: str, table: pa.Table) -> int:
    """Publish like the dataflow, with confirms and ``mandatory`` so an unbound queue is an error.

    A fresh connection each time: the shared test broker may be restarted by other suites.
    """
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        worker = table.column("worker")[0].as_py()
        ch.basic_publish(exchange, verdict_routing_key(worker), encode_table(table),
                         pika.BasicProperties(content_type=ARROW_CONTENT_TYPE), mandatory=True)
        lines = 0
        for src, body in eve_alerts(table).items():
            ch.basic_publish(exchange, alert_routing_key(src), body,
                             pika.BasicProperties(content_type=NDJSON_CONTENT_TYPE), mandatory=True)
            lines += body.count(b"\n")
        return lines
    finally:
        if conn.is_open:
            conn.close()


def _text(pg, selector: str) -> str:
    return pg.locator(selector).first.inner_text().strip()


def _wait_text(pg, selector: str, expected: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    got = None
    while time.monotonic() < end:
        try:
            got = _text(pg, selector)
        except Exception:  # noqa: BLE001 - element may be re-rendering
            got = None
        if got == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"{selector}: expected {expected!r}, page shows {got!r}")


def _card(key: str) -> str:
    return f'.phx-card[data-key="{key}"] .phx-value'


def _tab(pg, name: str) -> None:
    pg.locator(".bk-tab").filter(has_text=name).first.click()


def _top(table: pa.Table, column: str) -> list[str]:
    mal = table.filter(table.column("malicious"))
    counts = pc.value_counts(mal.column(column)).to_pylist()
    ranked = sorted(((c["values"], c["counts"]) for c in counts), key=lambda kv: (-kv[1], kv[0]))[:5]
    return [f"{a} — {n:,}" for a, n in ranked]


def test_dashboard_in_browser(server: dict, page, archive) -> None:
    pg = page
    ex = server["exchange"]
    _wait_text(pg, ".phx-status", "broker connected", timeout=30)
    assert "guest:***@" in pg.content() or "***" in _text(pg, ".phx-broker")
    assert "guest:guest@" not in pg.content()  # the password never reaches the page

    # A known set of verdicts: two workers, different latencies and malicious shares.
    a = verdict_batch(300, worker="w-a", devices=10, malicious_every=4, latency_ms=2.0, classify_us=4.0)
    b = verdict_batch(200, worker="w-b", devices=10, malicious_every=5, latency_ms=5.0, classify_us=6.0,
                      start_seq=300)
    both = pa.concat_tables([a, b])
    n_mal = int(pc.sum(both.column("malicious")).as_py())
    assert n_mal == 75 + 40
    alerts = _publish(ex, a) + _publish(ex, b)
    assert alerts == n_mal

    _wait_text(pg, _card("total"), "500")
    assert _text(pg, _card("malicious")) == "115"
    assert _text(pg, _card("share")) == "23.00 %"
    assert _text(pg, _card("latency")) == "3.20 ms"       # (300·2 + 200·5) / 500
    assert _text(pg, _card("classify")) == "4.80 µs"      # (300·4 + 200·6) / 500
    _wait_text(pg, _card("alerts"), "115")
    donut = pg.locator(".phx-donut").first
    assert (donut.get_attribute("data-benign"), donut.get_attribute("data-malicious")) == ("385", "115")

    # Most recent verdicts: newest first, malicious rows marked (and styled red).
    rows = pg.locator("table.phx-recent tbody tr")
    assert rows.count() == 12
    newest = b.slice(b.num_rows - 12).to_pylist()[::-1]
    for i, want in enumerate(newest):
        row = rows.nth(i)
        assert row.get_attribute("data-verdict-id") == want["verdict_id"]
        assert row.get_attribute("class") == ("malicious" if want["malicious"] else "benign")
        assert f"{want['src_addr']}:{want['src_port']}" in row.inner_text()
    red = pg.locator("table.phx-recent tr.malicious td").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert red == "rgb(253, 226, 225)"

    # Top-5 malicious sources and targets, counts included.
    assert pg.locator(".phx-top-sources li").all_inner_texts() == _top(both, "src_addr")
    assert pg.locator(".phx-top-targets li").all_inner_texts() == _top(both, "dst_addr")
    pg.wait_for_timeout(1000)  # let the charts finish drawing before the screenshot
    pg.screenshot(path=str(IMG / "dashboard.png"), full_page=True)

    # Devices page: ten synthetic devices, counts per device.
    _tab(pg, "Devices")
    pg.wait_for_selector("text=10 devices tracked")
    assert pg.locator(".tabulator-row").count() == 10
    assert pg.locator(".tabulator-row").filter(has_text="dev-0").count() >= 1

    # Alerts page: every alert line arrived; the search filter narrows to one source.
    _tab(pg, "Alerts")
    _wait_text(pg, ".phx-alerts-note", f"{n_mal} of the {n_mal} most recent alerts shown "
                                       f"({n_mal} received since the dashboard started)")
    src = "10.0.0.3"
    want = int(pc.sum(pc.and_(both.column("malicious"), pc.equal(both.column("src_addr"), src))).as_py())
    pg.locator("input[placeholder='10.0.0.1']").fill(src)
    pg.locator("input[placeholder='10.0.0.1']").press("Enter")
    pg.wait_for_selector(f'.phx-alerts-note[data-shown="{want}"]')
    assert pg.locator(".tabulator-row").filter(has_text=src).count() == min(want, 20)

    # History page: the Parquet archive (a half-written file is skipped), filtered by verdict.
    _tab(pg, "History")
    hist = archive[1]
    pg.locator("select").filter(has_text="malicious").first.select_option("malicious")
    pg.get_by_text("Search", exact=True).click()
    hist_mal = int(pc.sum(hist.column("malicious")).as_py())
    pg.wait_for_selector(f'.phx-history-summary[data-rows="{hist_mal}"]')
    assert f"{hist_mal} verdicts, {hist_mal} malicious" in _text(pg, ".phx-history-summary")
    with pg.expect_download() as dl:
        pg.get_by_text("Download CSV").click()
    csv_lines = Path(dl.value.path()).read_text().strip().splitlines()
    assert len(csv_lines) == hist_mal + 1

    # Model page: the configured artifact does not exist; the page says so instead of failing.
    _tab(pg, "Model")
    pg.wait_for_selector(".phx-model-missing")
    assert "model artifact not found" in _text(pg, ".phx-model-missing")

    # Broker away: the page says so; broker back: it reconnects by itself and counts again.
    _tab(pg, "Overview")
    _wait_text(pg, _card("total"), "500")
    server["proxy"].stop()
    _wait_text(pg, ".phx-status", "broker disconnected", timeout=20)
    pg.wait_for_selector("table.phx-recent tr.malicious")
    pg.wait_for_timeout(1000)  # let the charts finish drawing before the screenshot
    pg.screenshot(path=str(IMG / "dashboard-disconnected.png"))
    server["proxy"].start()
    _wait_text(pg, ".phx-status", "broker connected", timeout=30)
    c = verdict_batch(300, worker="w-c", devices=10, malicious_every=0, start_seq=500)
    for _attempt in range(20):
        try:
            _publish(ex, c)
            break
        except (pika.exceptions.UnroutableError, pika.exceptions.AMQPConnectionError):
            time.sleep(0.25)  # the new queue's bindings may land a moment after "connected"
    else:
        pytest.fail("the reconnected dashboard queue never got its bindings")
    _wait_text(pg, _card("total"), "800")
    assert _text(pg, _card("malicious")) == "115"
    log = server["log"].read_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(autouse=True, scope="module")
def _img_dir() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
