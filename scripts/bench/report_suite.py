"""The suite's section (`scripts/bench.sh all|keys|redis`), for `report.py suite`.

  report.py suite --out DIR --plots PLOTDIR
      prints the Markdown section from the results in DIR (machine.env, runs/, series/,
      profile/) and renders bench-latency.svg and bench-keys.svg into PLOTDIR with gnuplot
      (skipped, with a note, when gnuplot is absent).
"""

import json
import os
import re
import subprocess
import sys

from reportlib import fmt_rate, ms, read_env

BEGIN = "<!-- bench:begin (written by scripts/bench.sh; edits here are overwritten) -->"
END = "<!-- bench:end -->"

GROUPS = {
    "memory": "memory store",
    "redis-fast": "Redis Cluster, fast",
    "redis-strict": "Redis Cluster, strict",
}


def mib(kib):
    return f"{int(kib) / 1024:,.0f}".replace(",", " ")


def load(out):
    machine = read_env(os.path.join(out, "machine.env"))
    runs = []
    with open(os.path.join(out, "runs", "runs.list")) as f:
        for line in f.read().splitlines():
            if not line:
                continue
            name, group, title = line.split("\t")
            if group == "baseline":
                with open(os.path.join(out, "runs", name + ".csv")) as f2:
                    fields = [v.strip('"') for v in f2.read().strip().split('","')]
                with open(os.path.join(out, "runs", name + ".command")) as f2:
                    command = f2.read().strip()
                # "COMMAND","rps","avg","min","p50","p95","p99","max" (ms)
                r = {
                    "rps": float(fields[1]),
                    "p50_ms": float(fields[4]),
                    "p95_ms": float(fields[5]),
                    "p99_ms": float(fields[6]),
                    "max_ms": float(fields[7]),
                    "command": command,
                }
            else:
                with open(os.path.join(out, "runs", name + ".json")) as f2:
                    r = json.load(f2)
            runs.append((name, group, title, r))
    series = []
    series_dir = os.path.join(out, "series")
    for entry in sorted(os.listdir(series_dir)) if os.path.isdir(series_dir) else []:
        if entry.endswith(".env"):
            row = read_env(os.path.join(series_dir, entry))
            name = entry[: -len(".env")]
            with open(os.path.join(series_dir, name + "-fill.json")) as f:
                row["fill"] = json.load(f)
            with open(os.path.join(series_dir, name + "-refill.json")) as f:
                row["refill"] = json.load(f)
            row["measure"] = next((r for n, _, _, r in runs if n == name), None)
            series.append(row)
    series.sort(key=lambda row: int(row["keys"]))
    return machine, runs, series


def profile_tables(out):
    """(dso rows, symbol rows) of perf's flat profile: [(percent, name)]."""
    def rows(path, limit):
        found = []
        try:
            with open(path) as f:
                for line in f:
                    m = re.match(r"\s*([0-9.]+)%\s+(.*\S)\s*$", line)
                    if m and not line.lstrip().startswith("#"):
                        name = re.sub(r"\s+", " ", m.group(2))
                        found.append((float(m.group(1)), re.sub(r"( -)+$", "", name)))
        except OSError:
            return []
        return found[:limit]

    return (
        rows(os.path.join(out, "profile", "dso.txt"), 8),
        rows(os.path.join(out, "profile", "symbols.txt"), 15),
    )


COMPONENTS = [
    ("kernel and system calls (TCP, epoll, scheduling)",
     lambda dso, f: dso == "[kernel.kallsyms]" or f.startswith(("__GI___writev", "epoll_wait", "syscall", "__libc_recv", "__libc_send", "read", "write"))),
    ("allocator (mimalloc)", lambda dso, f: f.startswith(("mi_", "_mi_", "malloc", "free", "cfree", "__rustc::__rust_", "alloc::raw_vec"))),
    ("buffers and copies (memmove/memcpy, bytes)", lambda dso, f: "memmove" in f or "memcpy" in f or "memcmp" in f or f.startswith("bytes::")),
    ("h2 (HTTP/2 frames, streams, HPACK)", lambda dso, f: f.startswith(("h2::", "slab::", "indexmap::"))),
    ("hyper / http / axum / tower", lambda dso, f: f.startswith(("hyper", "http::", "http_body", "axum", "tower", "matchit", "percent_encoding"))),
    ("tonic / prost (gRPC, protobuf)", lambda dso, f: f.startswith(("tonic", "prost"))),
    ("tokio runtime and codecs", lambda dso, f: f.startswith(("tokio", "mio::", "parking_lot"))),
    ("drl-core (rules, store, algorithm)", lambda dso, f: f.startswith(("drl_core", "papaya", "arc_swap"))),
    ("drl-server / drl-proto (handlers, metrics, clocks)",
     lambda dso, f: f.startswith(("drl_server", "drl_proto", "prometheus_client", "quanta", "__vdso_clock_gettime", "clock_gettime", "std::time", "std::sys::pal::unix::time"))),
]


def components(out):
    """Self time by component, from perf's dso,symbol report: [(percent, component)]."""
    shares = {}
    try:
        with open(os.path.join(out, "profile", "symbols.txt")) as f:
            lines = f.readlines()
    except OSError:
        return []
    for line in lines:
        m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*\S)\s*$", line)
        if not m or line.lstrip().startswith("#"):
            continue
        dso, name = m.group(2), re.sub(r"( +-)+$", "", m.group(3)).lstrip("<&")
        while name.startswith("core::ptr::drop_in_place<"):
            name = name[len("core::ptr::drop_in_place<"):].lstrip("<&")
        label = next((label for label, test in COMPONENTS if test(dso, name)), "other")
        shares[label] = shares.get(label, 0.0) + float(m.group(1))
    return sorted(((v, k) for k, v in shares.items()), reverse=True)


def gnuplot(script, cwd):
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True, cwd=cwd,
                       capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"gnuplot failed: {getattr(e, 'stderr', e)}", file=sys.stderr)
        return False


def plot_latency(runs, out, plots):
    data = os.path.join(out, "latency.dat")
    curves = []
    with open(data, "w") as f:
        for name, group, title, r in runs:
            if group == "series":
                continue
            if group == "baseline":
                points = [(50, r["p50_ms"]), (95, r["p95_ms"]), (99, r["p99_ms"])]
                label = (
                    title.split(":", 1)[1].replace(" (EVALSHA), random keys", "").strip()
                    + " (redis-benchmark)"
                )
            else:
                points = [(p, us / 1000) for p, us in r.get("percentiles_us", []) if p < 100]
                label = f"{GROUPS.get(group, group)}: {title.split(',')[0]}"
            points = [(p, v) for p, v in points if v > 0]
            if not points:
                continue
            f.write(f"# {label}\n")
            for p, v in points:
                f.write(f"{100 / (100 - p):.6g} {v:.6g}\n")
            f.write("\n\n")
            curves.append(label.replace('"', "'"))
    if not curves:
        return False
    svg = os.path.abspath(os.path.join(plots, "bench-latency.svg"))
    plot = ", ".join(
        f'"{os.path.abspath(data)}" index {i} with linespoints title "{label}"'
        for i, label in enumerate(curves)
    )
    return gnuplot(
        f"""set terminal svg size 960,720 dynamic font "sans,11" background "white"
set output "{svg}"
set title "Latency by percentile (closed loop; per call)"
set logscale x
set logscale y
set xlabel "percentile"
set ylabel "latency (ms)"
set xrange [1:100000]
set xtics ("50%%" 2, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000, "99.999%%" 100000)
set grid
set key below left Left reverse maxrows 6
plot {plot}
""",
        out,
    )


def plot_keys(series, out, plots):
    if not series:
        return False
    data = os.path.join(out, "keys.dat")
    with open(data, "w") as f:
        f.write("# keys decisions/s p99_ms rss_load_mib rss_expired_mib rss_refill_mib\n")
        for row in series:
            r = row["measure"]
            f.write(
                f"{row['keys']} {r['decisions_per_s']:.0f} {r['latency_us']['p99'] / 1000:.3f} "
                f"{int(row['rss_load_kib']) / 1024:.1f} {int(row['rss_expired_kib']) / 1024:.1f} "
                f"{int(row['rss_refill_kib']) / 1024:.1f}\n"
            )
    svg = os.path.abspath(os.path.join(plots, "bench-keys.svg"))
    d = os.path.abspath(data)
    return gnuplot(
        f"""set terminal svg size 960,700 dynamic font "sans,11" background "white"
set output "{svg}"
set multiplot layout 2,1 title "Memory store: cost by number of keys (native batches of 100)"
set logscale x
set grid
set xlabel "keys"
set ylabel "decisions/s"
set y2label "p99 per batch (ms)"
set yrange [0:*]
set y2range [0:*]
set ytics nomirror
set y2tics
set key outside right top
plot "{d}" using 1:2 with linespoints title "decisions/s" axes x1y1, \\
     "{d}" using 1:3 with linespoints title "p99 (ms)" axes x1y2
unset y2label
unset y2tics
set ytics mirror
set logscale y
set yrange [*:*]
set ylabel "server RSS (MiB)"
plot "{d}" using 1:4 with linespoints title "after filling K keys", \\
     "{d}" using 1:5 with linespoints title "after their windows passed", \\
     "{d}" using 1:6 with linespoints title "after inserting K new keys"
unset multiplot
""",
        out,
    )


def section(out, plots):
    machine, runs, series = load(out)
    by_name = {name: r for name, _, _, r in runs}
    w_lines = []
    w = w_lines.append
    w(BEGIN)
    w("")
    w("## Suite: `scripts/bench.sh`")
    w("")
    w(
        f"*{machine.get('mode', '')}, {machine.get('date', '')}, {machine.get('drl', '')}; "
        f"the whole run took {machine.get('elapsed_s', '?')} s.*"
    )
    if machine.get("note"):
        w("")
        w(f"Note: {machine['note'].rstrip('.')}.")
    w("")
    w("| machine | |")
    w("|---|---|")
    for key, label in [
        ("cpu", "CPU"),
        ("cores", "cores"),
        ("memory", "memory"),
        ("kernel", "kernel"),
        ("virtualization", "virtualization"),
        ("rustc", "compiler"),
        ("redis", "Redis"),
        ("drl", "drl"),
    ]:
        w(f"| {label} | {machine.get(key, '')} |")
    w(
        f"| load average (1, 5, 15 min) | {machine.get('load_start', '')} at the start, "
        f"{machine.get('load_end', '')} at the end |"
    )
    w("")
    w(
        "Everything runs on this one machine: the load generator (`drl bench`, or "
        "`redis-benchmark` for the baselines), the `drl` node and the Redis Cluster (3 masters "
        "with 1 replica each, `scripts/redis-cluster.sh`) share its cores. Reproduce: "
        "`scripts/bench.sh` (`--quick` for a smoke run). Config of the scenario nodes: "
        "`default: {limit: 1000000, window: 1m}` (every decision allowed), sliding window at the "
        "default precision; keys `u<i>` × `/bench`."
    )
    w("")

    # Scenarios.
    w("### drl: scenarios")
    w("")
    w(
        "| store | scenario | calls/s | decisions/s | errors | p50 ms | p90 ms | p99 ms | p99.9 ms "
        "| max ms | cores: server / bench / other |"
    )
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, group, title, r in runs:
        if group not in GROUPS:
            continue
        lat = r["latency_us"]
        cpu = r.get("cpu", {})
        cores = (
            f"{cpu.get('server_cores', 0):.2f} / {cpu.get('bench_cores', 0):.2f} / "
            f"{max(cpu.get('other_cores') or 0, 0):.2f}"
        )
        w(
            f"| {GROUPS[group]} | {title} | {fmt_rate(r['requests_per_s'])} | "
            f"{fmt_rate(r['decisions_per_s'])} | {r['errors']} | {ms(lat['p50'])} | "
            f"{ms(lat['p90'])} | {ms(lat['p99'])} | {ms(lat['p99_9'])} | {ms(lat['max'])} | {cores} |"
        )
    w("")
    w(
        "Latency is per call (a batch of 100 is one call), from `drl bench`'s HDR histogram. "
        "*Cores* is CPU time per second of wall time (from `/proc`): the `drl` server, the "
        "generator, and everything else on the machine (the Redis processes count as *other*)."
    )
    w("")

    # Baselines.
    direct = by_name.get("direct-drl")
    zset = by_name.get("direct-zset")
    w("### Baselines: the scripts without drl")
    w("")
    w(
        "`redis-benchmark --cluster` against the same 3 masters, 64 connections, keys drawn "
        "from 10 000 (`-r 10000`, as `drl bench --keys 10000`), one script call per request, "
        "one call in flight per connection (as one per `drl bench` worker), and again pipelined "
        "by 16 (`-P 16`). *drl's script* is the exact text drl-redis loads for a sliding-window "
        f"check (prelude, `sliding_window.lua`, the single-check trailer; SHA1 "
        f"`{machine.get('sha_drl', '')}`, the one drl loaded), called with the arguments drl "
        f"sends for `limit: 1000000, window: 1m` (`{machine.get('drl_args', '')}`: the server's "
        "clock, 1 hit, N, T in ns, bucket width, ring slots, T mod width). So the comparison "
        "with the Redis fast rows is the same script, the same keys' spread over the same "
        "masters, and the same machine in the same run; what drl adds is its gRPC API, the "
        "client side of Redis (connection pool, slot routing, reply parsing) and its own "
        "generator's CPU. *Sorted-set log* is the common hand-written limiter "
        "(ZREMRANGEBYSCORE, ZCARD, ZADD, PEXPIRE in one script; exact but its memory grows with "
        "N)."
    )
    w("")
    w("| baseline | calls/s | p50 ms | p95 ms | p99 ms | max ms |")
    w("|---|--:|--:|--:|--:|--:|")
    for name, group, title, r in runs:
        if group != "baseline":
            continue
        w(
            f"| {title.split(':', 1)[1].strip()} | {fmt_rate(r['rps'])} | {r['p50_ms']:.2f} | "
            f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} |"
        )
    w("")
    if direct and zset:
        w(
            f"Sorted-set log ÷ drl's script: {zset['rps'] / direct['rps']:.2f}× the calls/s, "
            f"{zset['p99_ms'] / max(direct['p99_ms'], 1e-9):.2f}× the p99."
        )
        w("")
    scripts_table = os.path.join(out, "scripts", "table.md")
    if os.path.exists(scripts_table):
        w("### Each script alone, next to the sorted-set log")
        w("")
        w(
            "`scripts/bench/redis-scripts.sh`: limit 100 per 60 s, 64 clients, keys drawn from "
            "10 000, every run from empty masters; each of drl's single-check scripts and the "
            "sliding window through the many-checks call (16 checks per call), on a single "
            "redis-server and on the cluster above, the scripts in turn and the targets "
            "alternated, medians of 3 rounds. *Redis CPU* is `used_cpu_sys + used_cpu_user` of "
            "the masters (INFO cpu) after minus before, per decision; ratios are per round, then "
            "the median."
        )
        with open(scripts_table) as f:
            w(f.read().rstrip("\n"))
        w("")

    # Goals.
    w("### Goals")
    w("")
    goals = []

    def verdict(ok):
        return "met" if ok else "**missed**"

    envoy = by_name.get("mem-envoy")
    if envoy:
        goals.append(
            f"- memory store, Envoy API ≥ 50 000 calls/s at p99 ≤ 2 ms: "
            f"{verdict(envoy['requests_per_s'] >= 50_000 and envoy['latency_us']['p99'] <= 2_000)} "
            f"({fmt_rate(envoy['requests_per_s'])} calls/s, p99 {ms(envoy['latency_us']['p99'])} ms)"
        )
    native = by_name.get("mem-native")
    if native:
        goals.append(
            f"- memory store, native batch ≥ 2 000 000 decisions/s: "
            f"{verdict(native['decisions_per_s'] >= 2_000_000)} "
            f"({fmt_rate(native['decisions_per_s'])} decisions/s, batches of {native['batch']})"
        )
    http = by_name.get("mem-http")
    if http:
        goals.append(
            f"- memory store, HTTP ≥ 50 000 requests/s: {verdict(http['requests_per_s'] >= 50_000)} "
            f"({fmt_rate(http['requests_per_s'])} requests/s)"
        )
    for api, key in [("Envoy API", "redis-fast-envoy"), ("native batches", "redis-fast-native")]:
        fast = by_name.get(key)
        if fast and direct:
            ratio = fast["decisions_per_s"] / direct["rps"]
            piped = by_name.get("direct-drl-p16")
            also = (
                f"; {fast['decisions_per_s'] / piped['rps']:.2f}× the script pipelined by 16"
                if piped
                else ""
            )
            goals.append(
                f"- Redis fast, {api} ≥ 0.7× the direct script: {verdict(ratio >= 0.7)} "
                f"({fmt_rate(fast['decisions_per_s'])} decisions/s ÷ {fmt_rate(direct['rps'])} "
                f"EVALSHA/s with one call in flight per connection = {ratio:.2f}×{also})"
            )
    strict = [by_name.get(k) for k in ("redis-strict-envoy", "redis-strict-native") if by_name.get(k)]
    if strict:
        best = max(strict, key=lambda r: r["decisions_per_s"])
        goals.append(
            f"- Redis strict ≥ 20 000 decisions/s: {verdict(best['decisions_per_s'] >= 20_000)} "
            f"(best {fmt_rate(best['decisions_per_s'])} decisions/s, {best['target']}"
            f"{', batches of ' + str(best['batch']) if best['batch'] > 1 else ''})"
        )
    measured = [row for row in series if row.get("measure")]
    if len(measured) >= 2:
        first, last = measured[0], measured[-1]
        t = last["measure"]["decisions_per_s"] / first["measure"]["decisions_per_s"]
        p = last["measure"]["latency_us"]["p99"] / first["measure"]["latency_us"]["p99"]
        ok = 0.8 <= t <= 1.2 and 0.8 <= p <= 1.2
        goals.append(
            f"- throughput and p99 within ±20% from {fmt_rate(int(first['keys']))} to "
            f"{fmt_rate(int(last['keys']))} keys: {verdict(ok)} (decisions/s {t:.2f}×, "
            f"p99 {p:.2f}×)"
            + ("" if int(last["keys"]) >= 10_000_000 else "; this run stopped short of 10 M keys")
        )
    out_lines = goals or ["(no goal measured)"]
    w_lines.extend(out_lines)
    w("")

    # Latency plot.
    if plot_latency(runs, out, plots):
        w("![Latency by percentile, every scenario and baseline](bench-latency.svg)")
        w("")

    # Key-count series.
    if series:
        w("### Cost growth with the number of keys (memory store)")
        w("")
        w(
            "A fresh node per row, `default: {limit: 60000, window: W}` (limits up to 65 535 keep "
            "the default `u16` state: sparse, then a `u16` ring). *Fill*: exactly K keys, each checked once "
            "(`--sequential`, native batches of 100, 8 workers); *measure*: uniform over the same "
            "K keys for the scenario's duration; then wait for W and the sweeper (every 2 s) "
            "until the server is idle; then *refill*: K keys never seen (`--first-key K`). RSS is "
            "the server's `VmRSS`. W outlasts the fill and (unless noted below the table) the "
            "measure, so all K keys are live when the RSS after filling, 3 s later and after "
            "measuring is read. *Bytes/key* is (RSS 3 s after filling − RSS at start) ÷ K, each "
            "key holding one admission: by then the slot arrays that the table's growth freed "
            "during the fill have been returned (mimalloc purges a freed range after 1 s, and the "
            "node asks it to collect every second); right after the fill they may still be "
            "resident. *After measuring*, keys hold the measure's admissions too, and a key with "
            "admissions in more than 4 of its 60 buckets holds a ring of counts."
        )
        w("")
        w(
            "| keys | W | fill: decisions/s | decisions/s | p99 ms (batch of 100) | RSS at start "
            "MiB | after filling | 3 s later | bytes/key | after measuring | "
            "after the windows passed | after inserting K new keys |"
        )
        w("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        notes = []
        for row in series:
            r = row["measure"]
            keys = int(row["keys"])
            # Runs from before these readings have only the one after filling.
            settled_kib = int(row.get("rss_settled_kib", row["rss_load_kib"]))
            live_kib = int(row.get("rss_live_kib", row["rss_load_kib"]))
            per_key = (settled_kib - int(row["rss_start_kib"])) * 1024 / keys
            per_key = f"{per_key:.0f}" if keys >= 100_000 else "–"
            window = float(row["window_s"])
            if float(row.get("fill_s", row["load_s"])) > window:
                notes.append(
                    f"- {fmt_rate(keys)} keys: the fill took {float(row.get('fill_s', row['load_s'])):.0f} s, "
                    f"longer than W: fewer than K keys were live after it."
                )
            elif float(row["load_s"]) > window:
                notes.append(
                    f"- {fmt_rate(keys)} keys: fill and measure took {float(row['load_s']):.0f} s, "
                    "longer than W: keys the measure did not touch expired during it."
                )
            w(
                f"| {fmt_rate(keys)} | {row['window_s']} s | {fmt_rate(row['fill']['decisions_per_s'])} | "
                f"{fmt_rate(r['decisions_per_s'])} | {ms(r['latency_us']['p99'])} | "
                f"{mib(row['rss_start_kib'])} | {mib(row['rss_load_kib'])} | {mib(settled_kib)} | "
                f"{per_key} | {mib(live_kib)} | "
                f"{mib(row['rss_expired_kib'])} | {mib(row['rss_refill_kib'])} |"
            )
        w("")
        if notes:
            w_lines.extend(notes)
            w("")
        if plot_keys(series, out, plots):
            w("![Decisions/s, p99 and RSS by number of keys](bench-keys.svg)")
            w("")

    # Profile.
    dsos, symbols = profile_tables(out)
    if symbols:
        w("### Profile: the server under the Envoy API load (memory store)")
        w("")
        try:
            with open(os.path.join(out, "profile", "command")) as f:
                command = f.read().strip()
        except OSError:
            command = "perf record"
        w(
            f"`{command}` on the server while `drl bench --target envoy --concurrency 64` ran "
            "(software clock: this VM has no hardware counters), then `perf report --stdio "
            "--no-children --sort dso,symbol`: self time, where the CPU was when sampled, summed "
            "by the crate of each function (a drop of a type counts for the type's crate)."
        )
        w("")
        w("| share | component (by the function's crate) |")
        w("|--:|---|")
        for share, name in components(out):
            w(f"| {share:.1f}% | {name} |")
        w("")
        w("Top functions:")
        w("")
        w("| share | binary, function |")
        w("|--:|---|")
        for share, name in symbols:
            name = name.replace("|", "\\|")
            w(f"| {share:.2f}% | `{name[:140]}` |")
        w("")

    # Commands.
    w("### Commands")
    w("")
    w(
        "`drl` is `target/release/drl`; `$GRPC`/`$HTTP` the node's loopback addresses; `$PORT` "
        "a master of the cluster; `$SHA_DRL`/`$SHA_ZSET` the scripts loaded with "
        "`redis-cli -x SCRIPT LOAD` (texts in `target/bench/`)."
    )
    w("")
    w("```sh")
    for name, group, title, r in runs:
        label = GROUPS.get(group, group)
        w(f"# {label}: {title}")
        w(r["command"])
    for row in series[:1]:
        w("# key series fill / refill (K keys, then K new ones)")
        w(
            "drl bench --target native --batch 100 --concurrency 8 --server http://$GRPC "
            "--keys K --sequential --requests K/100 [--first-key K] --json"
        )
    w("```")
    w("")
    w(END)
    return "\n".join(w_lines)


def main(argv):
    if "--out" in argv and "--plots" in argv:
        out = argv[argv.index("--out") + 1]
        plots = argv[argv.index("--plots") + 1]
        print(section(out, plots))
    else:
        sys.exit(__doc__)


