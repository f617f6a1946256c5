"""The status page (`GET /`) in a real headless Chromium, driven by chromedriver over WebDriver.

A node (on a real redis-server, abuse protection on, an admin token) serves steady traffic from a thread:
users within their limit, and one (mallory) far over it, who gets banned. The page is loaded and
the test checks what it shows (the DOM) against the node's own figures:

- under traffic, decisions/s allowed and denied are both above 0;
- once the traffic stops, the totals allowed and denied, the checks, the latency percentiles
  (the upper bound of the histogram bucket), the store's counts (errors, fallbacks, deny-cache
  hits, WAIT shortfalls, reroutes) and the config version equal what `/metrics` says;
- without the token, no admin data is shown; a wrong token is refused;
- with the token: the rules in force are those of `/v1/config`, the top offenders those of
  `/v1/offenders`, the bans and blocks those of `/v1/blocks`, and a user id holding HTML is
  shown as text (no element made from it);
- a user blocked from the page is denied at their next check; unblocked from the page, allowed.

A screenshot of the page is written to $DRL_STATUS_SCREENSHOT when set (docs/status-page.png
was made so). Chromium and chromedriver are Debian's `chromium` and `chromium-driver` (installed
by scripts/e2e.sh when missing); the browser runs headless with a fresh profile and without
background networking, so the only traffic is to the node on 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import threading
import time
import urllib.parse
from pathlib import Path

from harness import (Failed, Processes, check, equal, free_port, port_open, request, run,
                     start_drl, wait_until)

TOKEN = "status-page-token"
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", shutil.which("chromedriver") or "chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1100"]
HTML_USER = '<img src=x onerror="document.title=1">'


class Browser:
    """A WebDriver session of chromedriver (plain HTTP + JSON, W3C WebDriver)."""

    def __init__(self, port: int, profile: Path):
        self.port = port
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM,
                                   "args": FLAGS + [f"--user-data-dir={profile}"]}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        # Starting the browser can take a while on a busy machine: a generous timeout.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=90)
        try:
            conn.request(method, path, body=data, headers={"content-type": "application/json"})
            r = conn.getresponse()
            status, value = r.status, json.loads(r.read()).get("value")
        finally:
            conn.close()
        if status != 200:
            raise Failed(f"WebDriver {method} {path}: {status} {value}")
        return value

    def s(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self.s("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def text(self, element_id: str) -> str:
        return self.js("return document.getElementById(arguments[0]).textContent", element_id)

    def element(self, css: str) -> str:
        found = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(found.values()))

    def type(self, css: str, text: str) -> None:
        self.s("POST", f"/element/{self.element(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.s("POST", f"/element/{self.element(css)}/click")

    def rows(self, tbody: str) -> list[list[str]]:
        return self.js("return [...document.getElementById(arguments[0]).rows]"
                       ".map(r => [...r.cells].map(c => c.textContent))", tbody)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.s("GET", "/screenshot"))

    def close(self) -> None:
        self.call("DELETE", f"/session/{self.session}")


def metrics(port: int) -> dict[str, float]:
    """`/metrics` as {series as written: value}."""
    out = {}
    for line in request(port, "GET", "/metrics").body.decode().splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def node_figures(port: int) -> dict:
    """What the page should show, from the node's own /metrics."""
    m = metrics(port)
    total = {"allowed": 0.0, "denied": 0.0}
    for series, value in m.items():
        if series.startswith(("drl_decisions_total{", "drl_descriptor_decisions_total{")):
            result = re.search(r'result="(\w+)"', series).group(1)
            total["denied" if result in ("denied", "blocked") else "allowed"] += value
    buckets = sorted((float(re.search(r'le="([^"]+)"', s).group(1).replace("+Inf", "inf")), v)
                     for s, v in m.items() if s.startswith("drl_check_duration_seconds_bucket"))
    count = buckets[-1][1]

    def bound(q: float) -> float:
        return next(le for le, n in buckets if n >= q * count)

    events = {e: m.get(f'drl_store_events_total{{event="{e}"}}', -1.0)
              for e in ("errors", "fallbacks", "deny_cache_hits", "wait_shortfalls", "reroutes")}
    return {"allowed": total["allowed"], "denied": total["denied"],
            **{f"store {e}": v for e, v in events.items()},
            "checks": m["drl_check_duration_seconds_count"],
            "version": m["drl_config_version"],
            "p50": bound(0.5), "p90": bound(0.9), "p99": bound(0.99)}


def shown_seconds(text: str) -> float:
    """The page's '≤ 256 µs' as seconds."""
    m = re.fullmatch(r"≤ ([\d.]+) (µs|ms|s)", text)
    if not m:
        raise Failed(f"a latency the page should show as '≤ N unit': {text!r}")
    return float(m.group(1)) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


def page_figures(browser: Browser) -> dict:
    return {"allowed": float(browser.text("allowed-total")),
            "denied": float(browser.text("denied-total")),
            "checks": float(browser.text("checks-total")),
            "version": float(browser.text("config-version")),
            **{q: shown_seconds(browser.text(q)) for q in ("p50", "p90", "p99")},
            **{f"store {e}": float(browser.text(element)) for e, element in (
                ("errors", "store-errors"), ("fallbacks", "store-fallbacks"),
                ("deny_cache_hits", "deny-cache-hits"), ("wait_shortfalls", "wait-shortfalls"),
                ("reroutes", "reroutes"))}}


def same(page: dict, node: dict) -> bool:
    return page.keys() == node.keys() and all(
        abs(page[k] - node[k]) <= 1e-9 * max(1.0, abs(node[k])) for k in node)


def check_json(port: int, user: str, endpoint: str) -> int:
    body = json.dumps({"user_id": user, "endpoint": endpoint}).encode()
    return request(port, "POST", "/v1/check", {"content-type": "application/json"}, body).status


def admin(port: int, method: str, path: str):
    r = request(port, method, path, {"authorization": f"Bearer {TOKEN}"})
    return r.json() if r.body else None


def test() -> None:
    with Processes("status-page") as procs:
        redis = free_port()
        procs.start("redis", ["redis-server", "--port", str(redis), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"])
        wait_until(lambda: port_open(redis), f"redis-server on {redis}")
        config = procs.write("status.yaml", f"""\
store:
  kind: redis
  redis:
    urls: ["redis://127.0.0.1:{redis}"]
    consistency: fast
    timeout: 2s
default:
  limit: 100000
  window: 1h
rules:
  - endpoint: /upload
    limit: 3
    window: 1h
abuse:
  threshold: 5
  interval: 1m
  ban: 10m
""")
        os.environ["DRL_ADMIN_TOKEN"] = TOKEN
        try:
            port, _ = start_drl(procs, config)
        finally:
            del os.environ["DRL_ADMIN_TOKEN"]
        equal(check_json(port, HTML_USER, "/feed"), 200, "a user id holding HTML is a user id")
        r = request(port, "PUT", "/v1/blocks/" + urllib.parse.quote(HTML_USER, safe=""),
                    {"authorization": f"Bearer {TOKEN}"})
        equal(r.status, 200, "that user blocked through the API")

        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                for user in ("alice", "bob", "carol"):
                    check_json(port, user, "/feed")
                check_json(port, "mallory", "/upload")
                time.sleep(0.02)

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()

        driver_port = free_port()
        procs.start("chromedriver", [CHROMEDRIVER, f"--port={driver_port}"])
        wait_until(lambda: _answers(driver_port), "chromedriver answers")
        browser = Browser(driver_port, procs.dir / "profile")
        try:
            browser.open(f"http://127.0.0.1:{port}/")
            equal(browser.js("return document.title"), "drl node status", "the page loads")

            def rates() -> tuple[float, float]:
                try:
                    return float(browser.text("allowed-rate")), float(browser.text("denied-rate"))
                except ValueError:  # "–" before the second refresh
                    return 0.0, 0.0

            wait_until(lambda: min(rates()) > 0, "decisions/s allowed and denied above 0",
                       timeout=20)
            allowed, denied = rates()
            check(True, f"under traffic the page shows {allowed}/s allowed, {denied}/s denied")
            equal(browser.text("store-kind"), "Redis", "the store")
            check(browser.js("return document.getElementById('admin-body').hidden"),
                  "no admin data without the token")

            stop.set()
            sender.join(timeout=10)
            node = node_figures(port)
            try:
                wait_until(lambda: same(page_figures(browser), node), "", timeout=15)
            except Failed:
                raise Failed(f"the page shows {page_figures(browser)}, "
                             f"not the node's figures {node}") from None
            check(True, f"the page shows the node's figures: {page_figures(browser)}")

            browser.type("#token", "wrong")
            browser.click("#token-button")
            wait_until(lambda: browser.text("admin-message") == "the token was refused",
                       "a wrong token refused", timeout=10)
            check(True, "a wrong token is refused, and nothing is shown")

            browser.type("#token", TOKEN)
            browser.click("#token-button")
            wait_until(lambda: not browser.js(
                "return document.getElementById('admin-body').hidden"), "admin data shown",
                timeout=10)
            config_view = admin(port, "GET", "/v1/config")
            rules = browser.rows("rules")
            equal(len(rules), 1 + len(config_view["rules"]), "rules shown: the default and each rule")
            equal(rules[1][:3], ["*", "/upload", "3 per 1h"], "the /upload rule as shown")
            equal(browser.text("rules-version"), str(config_view["version"]), "config version")

            offenders = [[o["user_id"], str(o["denials"])]
                         for o in admin(port, "GET", "/v1/offenders?limit=10")["offenders"]]
            check(len(offenders) >= 1, f"the node has offenders: {offenders}")
            wait_until(lambda: browser.rows("offenders") == offenders,
                       f"the page's offenders are the node's {offenders}", timeout=10)
            check(True, "top offenders as the node lists them")

            def blocked_users() -> list[list[str]]:
                return sorted([r[0], r[1]] for r in browser.rows("blocks"))

            node_blocks = sorted([b["user_id"], b["kind"]]
                                 for b in admin(port, "GET", "/v1/blocks")["blocks"])
            check(["mallory", "automatic"] in node_blocks, f"mallory is banned: {node_blocks}")
            wait_until(lambda: blocked_users() == node_blocks,
                       f"the page's bans and blocks are the node's {node_blocks}", timeout=10)
            check(True, "bans and blocks as the node lists them")
            equal(browser.js("return document.querySelectorAll('#blocks img').length"), 0,
                  "a user id holding HTML makes no element")
            equal(browser.js("return document.title"), "drl node status", "and runs no script")

            equal(check_json(port, "eve", "/feed"), 200, "eve is allowed before the block")
            browser.type("#block-user", "eve")
            browser.click("#block-button")
            wait_until(lambda: browser.text("block-message") == "eve blocked",
                       "the page blocks eve", timeout=10)
            equal(check_json(port, "eve", "/feed"), 429, "eve's next check, after the page blocked her")
            wait_until(lambda: ["eve", "manual"] in blocked_users(),
                       "eve in the page's blocks", timeout=10)
            check(True, "eve shown as blocked (manual)")

            if os.environ.get("DRL_STATUS_SCREENSHOT"):
                Path(os.environ["DRL_STATUS_SCREENSHOT"]).write_bytes(browser.screenshot())
                print(f"  screenshot written to {os.environ['DRL_STATUS_SCREENSHOT']}")

            browser.click('button.unblock[data-user="eve"]')
            wait_until(lambda: browser.text("block-message") == "eve unblocked",
                       "the page unblocks eve", timeout=10)
            equal(check_json(port, "eve", "/feed"), 200, "eve's next check, after the page unblocked her")
        finally:
            stop.set()
            browser.close()


def _answers(port: int) -> bool:
    try:
        return request(port, "GET", "/status").status == 200
    except OSError:
        return False


if __name__ == "__main__":
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install chromium chromium-driver")
    run("status page in headless Chromium", test, deadline=150)
