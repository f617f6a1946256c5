"""The peers section of docs/benchmarks.md (scripts/bench/peers.sh): drl next to Kuadrant
Limitador on Envoy's RateLimitService.

  report.py peers body DOMAIN USER ENDPOINT       one gRPC-framed RateLimitRequest (descriptor
                                                  user_id=USER, endpoint=ENDPOINT, hits 1) on stdout
  report.py peers h2load STDOUT LOG               h2load's summary and request log as JSON
  report.py peers merge JSON...                   the JSON objects merged into one line
  report.py peers report --out DIR [--note TEXT]  the section from DIR/machine.env, DIR/raw-*.jsonl
"""

import glob
import json
import os
import re
import statistics
import struct
import sys

from reportlib import fmt_rate, read_env

SERVERS = ["drl-memory", "limitador-memory", "drl-redis", "limitador-redis", "limitador-redis_cached"]
NAMES = {
    "drl-memory": "drl, memory",
    "limitador-memory": "Limitador, memory",
    "drl-redis": "drl, Redis (`consistency: fast`)",
    "limitador-redis": "Limitador, `redis`",
    "limitador-redis_cached": "Limitador, `redis_cached` (write-behind)",
}


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, data):
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def body(domain, user, endpoint):
    entry = lambda k, v: field(1, k.encode()) + field(2, v.encode())  # noqa: E731
    descriptor = field(1, entry("user_id", user)) + field(1, entry("endpoint", endpoint))
    message = field(1, domain.encode()) + field(2, descriptor) + varint(3 << 3) + varint(1)
    return b"\0" + struct.pack(">I", len(message)) + message


def h2load(stdout_path, log_path):
    text = open(stdout_path).read()
    out = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    if m:
        out["seconds"], out["calls_per_s"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    if m:
        out["calls"], out["failed"] = int(m.group(4)), int(m.group(5)) + int(m.group(6))
    latencies = []
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    latencies.append(int(parts[2]))
    if latencies:
        latencies.sort()
        at = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000.0  # noqa: E731
        out.update(p50_ms=at(0.5), p99_ms=at(0.99))
    return out


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def per_call(row, key):
    calls = row.get("calls") or (row.get("bench") or {}).get("decisions")
    cpu = row.get(key)
    return cpu * 1e6 / calls if calls and cpu is not None else None


def rate(row):
    return row.get("calls_per_s") or (row.get("bench") or {}).get("decisions_per_s")


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def runs(rows, f, digits):
    return " / ".join(fmt(f(r), digits) if digits is not None else fmt_rate(f(r) or 0) for r in rows)


def speed_table(rows_by_server, redis):
    lines = ["| server | calls/s, median (runs) | p50 / p99 ms | server CPU µs/call (runs) | Redis CPU µs/call (runs) |",
             "|---|---|---|---|---|"]
    for server in SERVERS:
        rows = rows_by_server.get(server)
        if not rows or ("redis" in server) != redis:
            continue
        p50 = median([r.get("p50_ms") or (r.get("bench") or {}).get("latency_us", {}).get("p50", 0) / 1000 for r in rows])
        p99 = median([r.get("p99_ms") or (r.get("bench") or {}).get("latency_us", {}).get("p99", 0) / 1000 for r in rows])
        redis_cpu = (f"{fmt(median([per_call(r, 'redis_cpu_s') for r in rows]))} "
                     f"({runs(rows, lambda r: per_call(r, 'redis_cpu_s'), 1)})") if redis else "–"
        lines.append(
            f"| {NAMES[server]} | {fmt_rate(median([rate(r) for r in rows]) or 0)} ({runs(rows, rate, None)}) | "
            f"{fmt(p50, 2)} / {fmt(p99, 2)} | {fmt(median([per_call(r, 'server_cpu_s') for r in rows]))} "
            f"({runs(rows, lambda r: per_call(r, 'server_cpu_s'), 1)}) | {redis_cpu} |")
    return lines


def ratios(rows_by_server):
    """drl ÷ peer per repetition (the servers of one repetition ran back to back), then the median."""
    def by_rep(server, f):
        return {r["rep"]: f(r) for r in rows_by_server.get(server, [])}

    out = []
    for ours, theirs in [("drl-memory", "limitador-memory"), ("drl-redis", "limitador-redis"),
                         ("drl-redis", "limitador-redis_cached")]:
        for what, f in [("calls/s", rate), ("server CPU per call", lambda r: per_call(r, "server_cpu_s")),
                        ("Redis CPU per call", lambda r: per_call(r, "redis_cpu_s"))]:
            # Write-behind barely touches Redis: a ratio to it says nothing.
            if what == "Redis CPU per call" and ("redis" not in ours or theirs.endswith("cached")):
                continue
            a, b = by_rep(ours, f), by_rep(theirs, f)
            each = [a[k] / b[k] for k in sorted(a) if k in b and a[k] and b[k]]
            if each:
                out.append(f"{NAMES[ours]} ÷ {NAMES[theirs]}, {what}: **{statistics.median(each):.2f}×** "
                           f"({' / '.join(f'{x:.2f}' for x in each)})")
    return out


def report(out_dir, note):
    machine = read_env(os.path.join(out_dir, "machine.env"))
    parts = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "raw-*.jsonl"))):
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    parts.setdefault(row["part"], {}).setdefault(row["server"], []).append(row)
    p = print
    p("<!-- bench-peers:begin (generated by scripts/bench.sh peers; edits here are overwritten) -->")
    p("## drl and Kuadrant Limitador (Envoy `ShouldRateLimit`)\n")
    p(f"Measured {machine.get('date', '?')}, {machine.get('mode', '')}: {machine.get('cpu', '?')}, "
      f"{machine.get('cores', '?')} cores, {machine.get('memory', '?')}, {machine.get('kernel', '?')} "
      f"({machine.get('virtualization', '?')}). Load average at the start {machine.get('loadavg_start', '?')}, "
      f"at the end {machine.get('loadavg_end', '?')}. {machine.get('drl', '?')}; Limitador "
      f"`{machine.get('limitador', '?')}`, built from source without its RocksDB disk storage "
      f"(`scripts/bench/peers/limitador-redis-only.patch`); {machine.get('redis', '?')} (one instance, "
      f"no persistence); {machine.get('h2load', '?')}; {machine.get('rustc', '')}.\n")
    p("The servers alternate, their order rotating each repetition, each measurement on a fresh server "
      f"and an emptied Redis; figures are medians of {machine.get('reps', '?')} repetitions, with each run "
      "in brackets. The load generator shares the machine, so CPU per call (the server process's user + "
      "system time over the calls) is the figure to compare; calls/s are whole-machine figures. Rules: "
      "domain (namespace) `perf`, one descriptor `user_id`, `endpoint`, one counter per pair; drl with "
      "its Envoy-format rules file, Limitador with `variables: [descriptors[0].user_id, "
      "descriptors[0].endpoint]`.\n")
    if note:
        p(f"Note: {note}\n")
    if "hot" in parts:
        p(f"### One hot key, all allowed\n\n`h2load -c 4 -m 32 -D {machine.get('duration', '?')}` with one "
          "request (limit 1 000 000 a minute; a probe after each run checks the key is still allowed), after "
          "a 5 000-call warm-up.\n")
        for redis in (False, True):
            p("\n".join(speed_table(parts["hot"], redis)))
            p()
        for line in ratios(parts["hot"]):
            p(f"- {line}")
        rows = [r for rs in parts["hot"].values() for r in rs]
        allowed = sum(1 for r in rows if (r.get("probe") or {}).get("allowed") == 1)
        p(f"- the probe after each run: allowed in {allowed} of {len(rows)} runs; calls h2load counted "
          f"as failed: {sum(r.get('failed') or 0 for r in rows)}")
        p()
    if "keys" in parts:
        p("### 100 000 keys\n\n`drl bench --target envoy --domain perf --keys 100000 --concurrency 128` "
          "(uniform keys, 2 HTTP/2 connections, limit 100 a minute).\n")
        for redis in (False, True):
            p("\n".join(speed_table(parts["keys"], redis)))
            p()
        for line in ratios(parts["keys"]):
            p(f"- {line}")
        generator = []
        for server in SERVERS:
            cpu = median([(r.get("bench") or {}).get("generator_cpu_us_per_request")
                          for r in parts["keys"].get(server, [])])
            if cpu is not None:
                generator.append(f"{NAMES[server]} {fmt(cpu)}")
        if generator:
            p(f"- the generator's own CPU per call (`drl bench`, on the same cores), median: {'; '.join(generator)} µs")
        p()
    if "correct" in parts:
        p("### Over-admission: one key, 20 per 10 s, 64 concurrent callers\n\n`drl bench --target envoy "
          "--domain perf --hot --concurrency 64 --connections 4 --admission-window 10s`. *By answer*: the "
          "most admitted calls whose answers arrived within one 10 s interval (an answer can arrive after its "
          "decision's window ended). *Proven*: the most whose whole [sent, answered] lies in one 10 s "
          "interval: their decisions fell in it, so more than 20 is a proven over-admission.\n")
        p("| server | admitted per run | most by answer (runs) | most proven (runs) | worst proven |")
        p("|---|---|---|---|---|")
        for server in SERVERS:
            rows = parts["correct"].get(server)
            if not rows:
                continue
            adm = [(r.get("bench") or {}).get("admissions") or {} for r in rows]
            worst = max(a.get("most_proven", 0) for a in adm)
            verdict = f"**{worst} (+{worst - 20})**" if worst > 20 else str(worst)
            p(f"| {NAMES[server]} | {' / '.join(str(a.get('admitted', '–')) for a in adm)} | "
              f"{' / '.join(str(a.get('most_by_answer', '–')) for a in adm)} | "
              f"{' / '.join(str(a.get('most_proven', '–')) for a in adm)} | {verdict} |")
        p()
    p("<!-- bench-peers:end -->")


def main(argv):
    if not argv:
        sys.exit(__doc__)
    command, rest = argv[0], argv[1:]
    if command == "body" and len(rest) == 3:
        sys.stdout.buffer.write(body(*rest))
    elif command == "h2load" and len(rest) == 2:
        print(json.dumps(h2load(*rest)))
    elif command == "merge":
        merged = {}
        for text in rest:
            merged.update(json.loads(text))
        print(json.dumps(merged))
    elif command == "report":
        out_dir, note = None, ""
        while rest:
            if rest[0] == "--out" and len(rest) > 1:
                out_dir, rest = rest[1], rest[2:]
            elif rest[0] == "--note" and len(rest) > 1:
                note, rest = rest[1], rest[2:]
            else:
                sys.exit(__doc__)
        if not out_dir:
            sys.exit(__doc__)
        report(out_dir, note)
    else:
        sys.exit(__doc__)
