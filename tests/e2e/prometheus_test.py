"""A real Prometheus scraping a real drl cluster: what it answers matches the traffic sent.

`scripts/cluster.sh up --prometheus` starts a Redis Cluster (3 masters, no replicas: `fast`
consistency), 3 drl nodes and Prometheus (deploy/prometheus/, scraping every second), all on
free loopback ports. The test then sends a known amount of traffic to each node, stops Redis and
sends more (every check answered by `on_error: deny`: HTTP 503, a store error, no decision),
and asks Prometheus's HTTP API for:

- each node's decisions, as a total and as `rate()` over the whole life of its series, evaluated
  at the node's last scrape (exact: no extrapolation, since every series starts at 0 before any
  traffic and the range ends on a sample), against what was sent to it;
- the denial ratio, of every node together and of each node;
- the store error rate: node 0's checks answered by `on_error` (fallbacks) over its decisions;
- that the alert rules loaded and evaluate without error, and that the fallbacks put
  DrlOnErrorFallbacks in `pending` for node 0 and no other;
- every query of deploy/grafana/drl.json (Grafana's variables substituted): no error, some
  series, and no name of a metric that the nodes do not export (read from their live /metrics);
- once node 1 is stopped, DrlNodeDown goes pending for it and no other.

Also checks, without Prometheus, that every alert of deploy/prometheus/alerts.yaml has a
promtool test case in which it fires (`promtool test rules` itself runs in scripts/e2e.sh).

Run by scripts/e2e.sh; by hand: `python3 tests/e2e/prometheus_test.py` (needs redis-server and
prometheus; cluster.sh installs Prometheus with apt-get when missing).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from harness import (ROOT, Failed, Processes, check, drl_binary, equal, port_open, request, run,
                     wait_until)

# Per node: (user, checks sent) on an endpoint whose rule allows LIMIT an hour per user.
LIMIT = 10
TRAFFIC = [("u0", 25), ("u1", 15), ("u2", 5)]
# Node 0's checks once Redis is stopped: all answered 503 by on_error (deny), each a fallback.
OUTAGE_CHECKS = 12
TOKEN = "e2e-admin-token"
DECISIONS = '{__name__=~"drl_decisions_total|drl_descriptor_decisions_total"'


def decision_rate(selector: str, window: str) -> str:
    """rate() of both decision families, the descriptors labelled apart: the two share label
    sets, which rate() (dropping the names) would refuse."""
    return (f"(rate(drl_decisions_total{{{selector}}}[{window}]) or label_replace("
            f'rate(drl_descriptor_decisions_total{{{selector}}}[{window}]), "api", "envoy", "", ""))')


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_block(count: int, taken: set[int], bus: bool = False) -> int:
    """The first of `count` consecutive free loopback ports (and, for Redis Cluster, the bus
    ports 10 000 above them), none in `taken`."""
    for _ in range(200):
        base = random.randint(20000, 50000)
        ports = list(range(base, base + count))
        if bus:
            ports += [p + 10000 for p in ports]
        if not taken.intersection(ports) and all(bindable(p) for p in ports):
            taken.update(ports)
            return base
    raise Failed(f"no {count} consecutive free ports")


class Prometheus:
    def __init__(self, port: int):
        self.port = port

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        r = request(self.port, "GET", f"/api/v1/{path}?{query}" if query else f"/api/v1/{path}")
        body = r.json()
        if r.status != 200 or body.get("status") != "success":
            raise Failed(f"Prometheus {path} {params}: {r.status} {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("query", **params)
        if data["resultType"] != "vector":
            raise Failed(f"{expr}: a {data['resultType']}, not a vector")
        return data["result"]

    def by_instance(self, expr: str, at: float | None = None) -> dict[str, float]:
        return {s["metric"].get("instance", ""): float(s["value"][1])
                for s in self.query(expr, at)}


def check_json(port: int, user: str, endpoint: str) -> bool:
    body = json.dumps({"user_id": user, "endpoint": endpoint}).encode()
    r = request(port, "POST", "/v1/check", {"content-type": "application/json"}, body)
    if r.status not in (200, 429):
        raise Failed(f"check on {port}: {r.status} {r.body!r}")
    return r.json()["allowed"]


def metric_names(text: str) -> list[str]:
    """The drl_* and process_* names in PromQL text (not recording rules' job:drl_…:… names)."""
    return re.findall(r"(?<![\w:])(?:drl|process)_[a-z0-9_]+\b(?!:)", text)


def exported_names(ports: list[int]) -> set[str]:
    """Every sample name the nodes export now (a counter `x` as `x_total`, a histogram as its
    `_bucket`, `_count` and `_sum`), from their live /metrics."""
    names = set()
    for port in ports:
        for line in request(port, "GET", "/metrics").body.decode().splitlines():
            if line and not line.startswith("#"):
                names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def alerts_have_firing_tests() -> None:
    rules = (ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text()
    tests = (ROOT / "deploy" / "prometheus" / "alerts_test.yaml").read_text()
    alerts = re.findall(r"^\s*- alert: (\w+)$", rules, re.M)
    check(len(alerts) >= 9, f"alerts.yaml has {len(alerts)} alerts")
    # An alert_rule_test whose exp_alerts is not empty: a case that fires it.
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n", tests))
    missing = [a for a in alerts if a not in firing]
    equal(missing, [], "alerts with no promtool case that fires them")


def test() -> None:
    alerts_have_firing_tests()
    taken: set[int] = set()
    http_base = free_block(3, taken)
    grpc_base = free_block(3, taken)
    redis_base = free_block(3, taken, bus=True)
    prom_port = free_block(1, taken)
    http_ports = [http_base + i for i in range(3)]
    instances = [f"127.0.0.1:{p}" for p in http_ports]

    with Processes("prometheus") as procs:
        config = procs.write("cluster.yaml", f"""\
store:
  kind: redis
  redis:
    urls: ["redis://127.0.0.1:{redis_base}"]
    cluster: true
    consistency: fast
    on_error: deny
    timeout: 2s
default:
  limit: 1000
  window: 1h
rules:
  - endpoint: /e2e
    limit: {LIMIT}
    window: 1h
    backends: [db]
adaptive:
  db:
    high: 0.8
    low: 0.6
""")
        env = dict(os.environ, DRL_BIN=str(drl_binary()), CONFIG=str(config),
                   HTTP_BASE=str(http_base), GRPC_BASE=str(grpc_base),
                   BASE_PORT=str(redis_base), REPLICAS="0", PROM_PORT=str(prom_port),
                   SCRAPE_INTERVAL="1s", DRL_ADMIN_TOKEN=TOKEN,
                   DRL_NODES_DIR=str(procs.dir / "nodes"),
                   DRL_CLUSTER_DIR=str(procs.dir / "redis"))
        cluster = [str(ROOT / "scripts" / "cluster.sh")]
        try:
            out = subprocess.run(cluster + ["up", "--prometheus"], env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise Failed(f"cluster.sh up --prometheus: {out.returncode}\n{out.stdout}{out.stderr}")
            check("prometheus: http://127.0.0.1:" in out.stdout, "cluster.sh up reports Prometheus")
            measure(Prometheus(prom_port), http_ports, instances, env)
        except Exception:
            for log in sorted((procs.dir / "nodes").glob("*.log")):
                lines = log.read_text(errors="replace").splitlines()[-20:]
                print(f"\n--- last lines of {log}:", file=sys.stderr)
                print("\n".join(lines), file=sys.stderr)
            raise
        finally:
            subprocess.run(cluster + ["down"], env=env, cwd=ROOT, timeout=60,
                           stdout=subprocess.DEVNULL)
        check(not any(port_open(p) for p in http_ports + [prom_port]),
              "cluster.sh down stopped every node and Prometheus")


def measure(prom: Prometheus, ports: list[int], instances: list[str], env: dict) -> None:
    # One Envoy-API check on node 2 first: its series (drl_descriptor_decisions_total{rule,
    # result}) is created by it, at 1, and rate() counts from a series' first sample, so it is
    # in the totals but not in the rates (Prometheus's way with a series born above 0).
    body = json.dumps({"domain": "drl", "descriptors": [{"entries": [
        {"key": "user_id", "value": "u2"}, {"key": "endpoint", "value": "/e2e"}]}]}).encode()
    r = request(ports[2], "POST", "/json", {"content-type": "application/json"}, body)
    equal(r.status, 200, "an Envoy JSON check on node 2 is allowed")
    before = {i: 0 for i in instances}
    before[instances[2]] = 1

    # Every node scraped once before the rest of the traffic: each series starts there.
    def scraped() -> bool:
        up = prom.by_instance('up{job="drl"}')
        counts = prom.by_instance(f"sum by (instance) ({DECISIONS}}})")
        return all(up.get(i) == 1 for i in instances) and counts == {
            i: float(n) for i, n in before.items()}

    wait_until(scraped, f"Prometheus scrapes every node, at {before} decisions")
    check(True, "Prometheus sees 3 nodes up")
    started = time.time()

    expected = {}
    for port, instance, (user, n) in zip(ports, instances, TRAFFIC):
        allowed = sum(check_json(port, user, "/e2e") for _ in range(n))
        equal(allowed, min(n, LIMIT - before[instance]),
              f"{instance}: {user}'s {n} checks, allowed")
        expected[instance] = {"checks": n, "denied": n - allowed, "fallbacks": 0}
    r = request(ports[0], "POST", "/v1/load",
                {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
                json.dumps({"backend": "db", "utilization": 0.95}).encode())
    equal(r.status, 200, "a load report for backend db")

    # Redis stops: node 0's checks are answered by on_error (deny): each is the store's error,
    # HTTP 503 (never a rate-limit denial, nor a decision), and counted as a fallback.
    out = subprocess.run([str(ROOT / "scripts" / "redis-cluster.sh"), "down"], env=env,
                         capture_output=True, text=True, timeout=60)
    equal(out.returncode, 0, "Redis Cluster stopped")
    body = json.dumps({"user_id": "v0", "endpoint": "/e2e"}).encode()
    statuses = [request(ports[0], "POST", "/v1/check", {"content-type": "application/json"},
                        body).status for _ in range(OUTAGE_CHECKS)]
    equal(statuses, [503] * OUTAGE_CHECKS,
          f"{OUTAGE_CHECKS} checks with Redis down: answered as unavailable")
    expected[instances[0]]["fallbacks"] = OUTAGE_CHECKS

    totals = f"sum by (instance) ({DECISIONS}}})"
    want = {i: float(before[i] + e["checks"]) for i, e in expected.items()}
    wait_until(lambda: prom.by_instance(totals) == want,
               f"Prometheus's totals reach {want}", timeout=30)
    check(True, f"decisions per node, as totals: {want}")
    # The outage's checks are no decisions: wait for a scrape that has node 0's fallbacks too.
    fallbacks = 'drl_store_events_total{job="drl", event="fallbacks"}'
    wait_until(lambda: prom.by_instance(fallbacks).get(instances[0]) == OUTAGE_CHECKS,
               f"Prometheus sees node 0's {OUTAGE_CHECKS} fallbacks", timeout=30)

    # The last scrape of each node, and a range reaching back before its first.
    last = prom.by_instance('timestamp(drl_config_version{job="drl"})')
    window = math.ceil(time.time() - started) + 60
    for instance, e in expected.items():
        sel = f'job="drl", instance="{instance}"'
        at = last[instance]
        rate = prom.query(f"sum({decision_rate(sel, f'{window}s')})", at)
        got = float(rate[0]["value"][1]) * window
        check(abs(got - e["checks"]) < 1e-6 * e["checks"],
              f"{instance}: rate(decisions) × {window}s = {got:.6f}, {e['checks']} sent since")
        denied = decision_rate(f'{sel}, result="denied"', f"{window}s")
        ratio = prom.query(f"sum({denied}) / sum({decision_rate(sel, f'{window}s')})", at)
        want_ratio = e["denied"] / e["checks"]
        got_ratio = float(ratio[0]["value"][1])
        check(abs(got_ratio - want_ratio) < 1e-9,
              f"{instance}: denial ratio {got_ratio:.4f}, {e['denied']}/{e['checks']} sent")
        fallbacks = prom.query(
            f'sum(rate(drl_store_events_total{{{sel}, event="fallbacks"}}[{window}s]))'
            f' / sum(rate(drl_check_duration_seconds_count{{{sel}}}[{window}s]))', at)
        want_rate = e["fallbacks"] / e["checks"]
        got_rate = float(fallbacks[0]["value"][1])
        check(abs(got_rate - want_rate) < 1e-9,
              f"{instance}: store error rate (fallbacks/checks) {got_rate:.4f}, "
              f"{e['fallbacks']}/{e['checks']} sent")
    errors = prom.by_instance('drl_store_events_total{job="drl", event="errors"}')
    check(1 <= errors.get(instances[0], 0) <= OUTAGE_CHECKS,
          f"node 0 counted between 1 and {OUTAGE_CHECKS} Redis errors: {errors}")

    denied = sum(e["denied"] for e in expected.values())
    checks = sum(e["checks"] + before[i] for i, e in expected.items())
    ratio = prom.query(f'sum({DECISIONS}, job="drl", result="denied"}})'
                       f' / sum({DECISIONS}, job="drl"}})')
    check(abs(float(ratio[0]["value"][1]) - denied / checks) < 1e-9,
          f"denial ratio of the cluster: {denied}/{checks}")

    # The rules: loaded, evaluated without error; DrlOnErrorFallbacks pending on node 0 only.
    groups = prom.get("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    check(len(rules) >= 12, f"Prometheus loaded {len(rules)} rules from alerts.yaml")
    wait_until(lambda: not any(r["lastEvaluation"].startswith("0001")
                               for g in prom.get("rules")["groups"] for r in g["rules"]),
               "every rule evaluated once", timeout=30)
    bad = [(r["name"], r.get("lastError")) for g in prom.get("rules")["groups"]
           for r in g["rules"] if r["health"] != "ok"]
    equal(bad, [], "rules whose evaluation failed")

    def pending() -> dict[str, str]:
        return {a["labels"].get("instance", ""): a["state"] for a in prom.get("alerts")["alerts"]
                if a["labels"]["alertname"] == "DrlOnErrorFallbacks"}

    wait_until(lambda: instances[0] in pending(), "DrlOnErrorFallbacks pending", timeout=15)
    equal(pending(), {instances[0]: "pending"}, "DrlOnErrorFallbacks, by node")
    firing = [a["labels"]["alertname"] for a in prom.get("alerts")["alerts"]
              if a["labels"]["alertname"] == "DrlNodeDown"]
    equal(firing, [], "DrlNodeDown with every node up")

    dashboard_queries(prom, ports)

    # A node stopped: DrlNodeDown goes pending for it, and for no other.
    pid = int((Path(env["DRL_NODES_DIR"]) / "node1.pid").read_text())
    os.kill(pid, signal.SIGTERM)

    def down() -> dict[str, str]:
        return {a["labels"]["instance"]: a["state"] for a in prom.get("alerts")["alerts"]
                if a["labels"]["alertname"] == "DrlNodeDown"}

    wait_until(lambda: down() != {}, "DrlNodeDown once node 1 is stopped", timeout=30)
    equal(down(), {instances[1]: "pending"}, "DrlNodeDown, by node")


def dashboard_queries(prom: Prometheus, ports: list[int]) -> None:
    """Every panel's query of the Grafana dashboard runs, and names only exported metrics."""
    exported = exported_names(ports) | {"up"}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "drl.json").read_text())
    variables = {"$__rate_interval": "1m", "$job": "drl", "$instance": ".*"}
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"]
               for t in p.get("targets", [])]
    queries += [(v["name"], v["query"]["query"]) for v in dashboard["templating"]["list"]
                if v["type"] == "query"]
    check(len(queries) >= 20, f"the dashboard has {len(queries)} queries")
    rules = (ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text()
    named = set(metric_names(re.sub(r"(?m)^\s*#.*$", "", rules)))
    unknown = sorted(named - exported)
    equal(unknown, [], f"metrics of alerts.yaml ({len(named)}) that the nodes do not export")
    for title, expr in queries:
        names = set(metric_names(expr))
        names |= set(re.findall(r"\b(up)\{", expr))
        unknown = sorted(names - exported)
        if unknown:
            raise Failed(f"{title}: {unknown} not exported by the nodes, in {expr}")
        label_values = re.fullmatch(r"label_values\((.*), (\w+)\)", expr)
        if label_values:
            expr = label_values.group(1)
        for var, value in variables.items():
            expr = expr.replace(var, value)
        if re.search(r"\$\w", expr):
            raise Failed(f"{title}: a variable the test does not know, in {expr}")
        # A query error fails the test; so does a query that finds nothing (a misspelt label
        # value), since every family is live on this cluster.
        result = prom.query(expr)
        check(len(result) > 0, f"{title}: {len(result)} series from {expr[:70]}…")
    print()


if __name__ == "__main__":
    run("Prometheus and the dashboard against a real cluster", test, deadline=240)
