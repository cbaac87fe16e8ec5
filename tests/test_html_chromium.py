"""report.html in a real browser: headless Chromium driven over the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe`` (commands on fd 3, events
on fd 4, NUL-separated JSON), so no websocket client is needed. The test loads
report.html from a file, with every host name mapped to nothing, and checks:
no network request besides the page itself, no console message of level error
or warning (a script the page's CSP blocked would log one), no script exception,
the malicious record's ``<script>`` did not run (the title is not PWNED) and
shows as text, the table of examples filters by text and errors and sorts by a
score, and a screenshot has real content. Skipped only where /usr/bin/chromium is missing (CI installs it with
``apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from nlpflow.api import run

CHROMIUM = os.environ.get("NLPFLOW_CHROMIUM", "/usr/bin/chromium")
PAYLOAD = "<script>document.title='PWNED'</script>"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (Debian: apt-get update && apt-get install -y chromium)"
)


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, user_data_dir: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_pipes():  # runs in the child: the protocol expects fds 3 (commands in) and 4 (events out)
            # copy first: the pipes may themselves be fds 3-6, and dup2 onto the same fd keeps close-on-exec
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
                "--disable-default-apps", "--mute-audio", "--host-resolver-rules=MAP * ~NOTFOUND",
                f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes, close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._from_chrome], [], [], remaining)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG into rows of pixel bytes (stdlib only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, previous))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, bpp, rows


@pytest.fixture
def report_file(tmp_path, write_pipelines, cache_dir):
    labels = ["positive", "negative", "neutral"]
    records = []
    for i in range(60):
        label = labels[i % 3]
        prediction = labels[(i + (i % 4 == 0)) % 3]
        records.append({"text": f"Review number {i}. " + "Quite a long sentence here. " * (i % 7), "label": label,
                        "prediction": prediction, "source": ["web", "shop"][i % 2]})
    records[0]["text"] = f"{PAYLOAD} <img src=x onerror=\"document.title='PWNED'\">"
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = write_pipelines(
        "pipelines:\n  browser:\n    task: text-classification\n    data: {path: data.jsonl}\n"
        "    report: {formats: [json, html], slice_by: [source], bootstrap: {resamples: 100}}\n"
    )
    [result] = run(["browser"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    return result.directory / "report.html"


def test_report_renders_in_chromium_without_requests_errors_or_script(report_file, tmp_path):
    browser = DevTools(tmp_path / "chromium-profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        url = report_file.resolve().as_uri()
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        browser.drain(1.0)

        title = browser.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True}, session=session)["result"]["value"]
        scripts = browser.send("Runtime.evaluate", {"expression": "document.scripts.length", "returnByValue": True}, session=session)["result"]["value"]
        images = browser.send("Runtime.evaluate", {"expression": "document.images.length", "returnByValue": True}, session=session)["result"]["value"]
        text = browser.send("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True}, session=session)["result"]["value"]
        svgs = browser.send("Runtime.evaluate", {"expression": "document.querySelectorAll('svg.confusion rect').length", "returnByValue": True},
                            session=session)["result"]["value"]

        def evaluate(expression):
            reply = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
            assert "exceptionDetails" not in reply, reply
            return reply["result"].get("value")  # none for undefined

        visible = "[...document.querySelectorAll('#ex-table tbody tr')].filter(row => !row.hidden).length"
        table = {"rows": evaluate(visible), "controls": evaluate("!document.getElementById('ex-filter').hidden")}
        evaluate("box = document.getElementById('ex-text'); box.value = 'REVIEW number 42.'; box.dispatchEvent(new Event('input'))")
        table["matching"] = evaluate(visible)
        table["matching_record"] = evaluate("[...document.querySelectorAll('#ex-table tbody tr')].find(row => !row.hidden).cells[0].textContent")
        evaluate("box.value = ''; box.dispatchEvent(new Event('input')); document.getElementById('ex-errors').click()")
        table["errors"] = evaluate(visible)
        table["errors_marked"] = evaluate("document.querySelectorAll('#ex-table tbody tr[data-error]').length")
        table["count"] = evaluate("document.getElementById('ex-count').textContent")
        evaluate("document.getElementById('ex-errors').click(); limit = document.getElementById('ex-max'); limit.value = '0.5';"
                 "limit.dispatchEvent(new Event('input'))")
        table["at_most_half"] = evaluate(visible)
        evaluate("limit.value = ''; limit.dispatchEvent(new Event('input'));"
                 "[...document.querySelectorAll('#ex-table thead th')].find(th => th.textContent === 'accuracy').querySelector('button').click()")
        table["sorted"] = evaluate("[...document.querySelectorAll('#ex-table tbody tr')].map(row => row.cells[row.cells.length - 1].dataset.v)")
        shot = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
        browser.drain(0.3)
    finally:
        browser.close()
    (tmp_path / "report.png").write_bytes(shot)

    assert title == "browser · nlpflow report" and "PWNED" not in title
    assert scripts == 1 and images == 0  # the table's own script, none from the data
    assert PAYLOAD in text, "the record's markup must show as text"
    assert svgs == 9  # 3 x 3 confusion matrix
    # every example in the table; the script shows its controls, and filters and sorts the rows
    errors = sum(1 for i in range(60) if i % 4 == 0)  # the records predicted with the next label
    assert table["rows"] == 60 and table["controls"] is True
    assert table["matching"] == 1 and table["matching_record"] == "42"
    assert table["errors"] == table["errors_marked"] == errors and table["count"] == f"showing {errors} of 60 rows"
    assert table["at_most_half"] == errors  # accuracy per example is 0 or 1
    assert table["sorted"] == sorted(table["sorted"], key=float) and table["sorted"][0] == "0.0"

    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests == [url], f"the page made requests: {requests}"
    console = [e["params"] for e in browser.events if e.get("method") == "Runtime.consoleAPICalled"]
    exceptions = [e["params"] for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    logged = [e["params"]["entry"] for e in browser.events
              if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning")]
    assert console == [] and exceptions == [] and logged == [], (console, exceptions, logged)

    width, bpp, rows = png_pixels(shot)
    assert width == 1200
    colours = {row[i:i + 3] for row in rows[::4] for i in range(0, len(row), bpp * 3)}
    assert len(colours) > 30, "screenshot looks blank"
    white = sum(1 for row in rows[::8] for i in range(0, len(row), bpp * 8) if row[i:i + 3] == b"\xff\xff\xff")
    total = sum(1 for row in rows[::8] for _ in range(0, len(row), bpp * 8))
    assert white / total < 0.97, "screenshot is almost all white"
    if os.environ.get("NLPFLOW_KEEP_SCREENSHOT"):
        shutil.copy(tmp_path / "report.png", os.environ["NLPFLOW_KEEP_SCREENSHOT"])
