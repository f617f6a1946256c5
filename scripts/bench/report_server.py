"""The server section (`scripts/bench.sh server`), for `report.py server`.

  report.py server run --server-pid PID --out FILE.json -- DRL BENCH-ARGS...
      runs one `drl bench ... --json`, samples the CPU time of the server and of the bench
      process (from /proc) between 1 s after the start and 0.5 s before the planned end, and
      writes the bench's JSON with a "cpu" object added: cores used by each, and the machine's.
  report.py server report --machine machine.env --runs DIR
      prints the Markdown section from the run files (written in the order of runs.list).
"""

import json
import os
import subprocess
import sys
import time

from reportlib import fmt_rate, ms

BEGIN = "<!-- bench-server:begin (written by scripts/bench.sh server; edits here are overwritten) -->"
END = "<!-- bench-server:end -->"
TICK = os.sysconf("SC_CLK_TCK")


def proc_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # Fields 14 and 15 of stat(5); fields[0] is field 3 (state).
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def machine_ticks():
    """(busy, total) clock ticks of all CPUs."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


def duration_of(args):
    """The run's length in seconds from --duration (plain seconds or e.g. 10s)."""
    if "--duration" in args:
        text = args[args.index("--duration") + 1]
        for unit, factor in (("ms", 0.001), ("s", 1), ("m", 60)):
            if text.endswith(unit) and text[: -len(unit)].isdigit():
                return int(text[: -len(unit)]) * factor
        return float(text)
    return 10.0


def run(argv):
    server_pid = int(argv[argv.index("--server-pid") + 1])
    out = argv[argv.index("--out") + 1]
    command = argv[argv.index("--") + 1 :]
    length = duration_of(command)
    started = time.monotonic()
    bench = subprocess.Popen(command + ["--json"], stdout=subprocess.PIPE, text=True)
    # Past connection set-up and warm-up, up to shortly before the planned end.
    time.sleep(1.0)
    first = (proc_ticks(server_pid), proc_ticks(bench.pid), machine_ticks(), time.monotonic())
    time.sleep(max(0.5, length - 1.5 - (time.monotonic() - started) + 1.0))
    last = (proc_ticks(server_pid), proc_ticks(bench.pid), machine_ticks(), time.monotonic())
    rss = proc_rss_mib(server_pid)
    stdout, _ = bench.communicate(timeout=length + 60)
    if bench.returncode != 0:
        sys.exit(f"drl bench failed ({bench.returncode}): {' '.join(command)}")
    report = json.loads(stdout)
    seconds = last[3] - first[3]
    cpu = {"window_s": round(seconds, 2), "server_rss_mib": rss}
    if None not in (first[0], last[0], first[1], last[1]) and seconds > 0:
        cpu["server_cores"] = (last[0] - first[0]) / TICK / seconds
        cpu["bench_cores"] = (last[1] - first[1]) / TICK / seconds
        busy = last[2][0] - first[2][0]
        total = last[2][1] - first[2][1]
        cores = os.cpu_count() or 1
        cpu["machine_busy_cores"] = busy / total * cores if total else None
        cpu["other_cores"] = (
            cpu["machine_busy_cores"] - cpu["server_cores"] - cpu["bench_cores"]
            if cpu["machine_busy_cores"] is not None
            else None
        )
    report["cpu"] = cpu
    shown = [os.path.basename(command[0])] + command[1:]
    if "--server" in shown:
        http = "--target" in shown and shown[shown.index("--target") + 1] == "http"
        shown[shown.index("--server") + 1] = "http://$HTTP" if http else "http://$GRPC"
    report["command"] = " ".join(shown)
    with open(out, "w") as f:
        json.dump(report, f)
    r = report
    print(
        f"  {r['requests_per_s']:,.0f} requests/s, {r['decisions_per_s']:,.0f} decisions/s, "
        f"p99 {r['latency_us']['p99'] / 1000:.2f} ms, errors {r['errors']}; "
        f"cores: server {cpu.get('server_cores', 0):.2f}, bench {cpu.get('bench_cores', 0):.2f}, "
        f"other {cpu.get('other_cores') or 0:.2f}",
        file=sys.stderr,
    )


def report(argv):
    machine = {}
    with open(argv[argv.index("--machine") + 1]) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            machine[key] = value
    runs_dir = argv[argv.index("--runs") + 1]
    with open(os.path.join(runs_dir, "runs.list")) as f:
        names = [line.split("\t") for line in f.read().splitlines() if line]
    runs = []
    for name, title, config in names:
        with open(os.path.join(runs_dir, name + ".json")) as f:
            runs.append((name, title, config, json.load(f)))

    out = []
    w = out.append
    w(BEGIN)
    w("")
    w("## Server: `drl bench` against one `drl serve` (memory store)")
    w("")
    w(f"*{machine.get('mode', '')}, {machine.get('date', '')}, commit {machine.get('commit', '')}.*")
    if machine.get("note"):
        w("")
        w(f"Note: {machine['note'].rstrip('.')}.")
    w("")
    w("| machine | |")
    w("|---|---|")
    w(f"| CPU | {machine.get('cpu', '')} |")
    w(f"| cores | {machine.get('cores', '')} |")
    w(f"| memory | {machine.get('memory', '')} |")
    w(f"| kernel | {machine.get('kernel', '')} |")
    w(f"| virtualization | {machine.get('virtualization', '')} |")
    w(f"| compiler | {machine.get('rustc', '')} |")
    w(
        f"| load average (1, 5, 15 min) | {machine.get('load_start', '')} at the start, "
        f"{machine.get('load_end', '')} at the end |"
    )
    w("")
    w(
        "The load generator (`drl bench`) and the server run on the same machine and share its "
        "cores. Reproduce: `scripts/bench.sh server` (builds release, starts `drl serve` on "
        "loopback ports with the configs below, runs every scenario, stops the server)."
    )
    w("")
    w("Configs: *high limit* = `default: {limit: 1000000, window: 1m}` (every decision allowed); "
      "*low limit* = `default: {limit: 10, window: 1m}` (nearly every decision denied). "
      "Keys: `u<i>` × `/bench`.")
    w("")
    w("| scenario | config | requests/s | decisions/s | allowed | denied | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | cores: server / bench / other | server CPU µs per request (per decision) |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, title, config, r in runs:
        lat = r["latency_us"]
        cpu = r.get("cpu", {})
        cores = (
            f"{cpu.get('server_cores', 0):.2f} / {cpu.get('bench_cores', 0):.2f} / {max(cpu.get('other_cores') or 0, 0):.2f}"
        )
        per_request = cpu.get("server_cores", 0) / max(r["requests_per_s"], 1e-9) * 1e6
        per_decision = cpu.get("server_cores", 0) / max(r["decisions_per_s"], 1e-9) * 1e6
        cost = f"{per_request:.1f}" if r["batch"] == 1 else f"{per_request:.0f} ({per_decision:.2f})"
        w(
            f"| {title} | {config} | {fmt_rate(r['requests_per_s'])} | {fmt_rate(r['decisions_per_s'])} | "
            f"{r['allowed']} | {r['denied']} | {r['errors']} | {ms(lat['p50'])} | {ms(lat['p90'])} | "
            f"{ms(lat['p99'])} | {ms(lat['p99_9'])} | {ms(lat['max'])} | {cores} | {cost} |"
        )
    w("")
    w("Commands (`drl` is `target/release/drl`; `$GRPC` and `$HTTP` are the server's loopback addresses):")
    w("")
    w("```sh")
    for name, title, config, r in runs:
        w(f"# {title} ({config})")
        w(r["command"])
    w("```")
    w("")
    w(
        "Decisions/s counts each check of a batch; requests/s counts calls. Latency is per call, "
        "from an HDR histogram; in the open-loop rows it is measured from the time each call was "
        "due, so any queueing in the server or the generator is included. *Cores* is CPU time per "
        "second of wall time during the run (from `/proc`): the server process, the `drl bench` "
        "process, and everything else on the machine (other builds and tests share this machine; "
        "a busy *other* column means fewer cores for the two). *Server CPU per request* is the "
        "server's cores divided by the rate: what one call costs the server (it too rises when "
        "the machine is busy, since caches and the sibling hyperthread are shared)."
    )
    w("")

    # Goals.
    def best(prefix):
        values = [r for name, _, config, r in runs if name.startswith(prefix) and config == "high limit"]
        return max(values, key=lambda r: r["decisions_per_s"]) if values else None

    goals = []
    envoy = best("envoy-closed")
    if envoy:
        met = envoy["requests_per_s"] >= 50_000 and envoy["latency_us"]["p99"] <= 2_000
        goals.append(
            f"- Envoy API ≥ 50 000 calls/s at p99 ≤ 2 ms: **{'met' if met else 'missed'}** "
            f"({fmt_rate(envoy['requests_per_s'])} calls/s, p99 {ms(envoy['latency_us']['p99'])} ms closed loop)"
        )
    native = best("native")
    if native:
        met = native["decisions_per_s"] >= 2_000_000
        goals.append(
            f"- native batch ≥ 2 000 000 decisions/s: **{'met' if met else 'missed'}** "
            f"({fmt_rate(native['decisions_per_s'])} decisions/s, batches of {native['batch']})"
        )
    http = best("http-closed")
    if http:
        met = http["requests_per_s"] >= 50_000
        goals.append(
            f"- HTTP ≥ 50 000 requests/s: **{'met' if met else 'missed'}** ({fmt_rate(http['requests_per_s'])} requests/s)"
        )
    if goals:
        w("Goals (a 2-core machine, load generator on the same box):")
        w("")
        out.extend(goals)
        w("")
    w(END)
    print("\n".join(out))


def main(argv):
    if argv[:1] == ["run"]:
        run(argv[1:])
    elif argv[:1] == ["report"]:
        report(argv[1:])
    else:
        sys.exit(__doc__)


