"""The core section (`scripts/bench.sh core`), for `report.py core`: the output of
scripts/bench/core.sh as the bench-core section of docs/benchmarks.md.

  report.py core --criterion DIR --since FILE --machine FILE --limiter LOG --memory MD
      prints the section (Markdown) built from the limiter bench's output (drl and governor
      interleaved: `result` and `series` lines), criterion's estimates of the parts bench newer
      than FILE, the machine description and the memory table.
"""

import argparse
import json
import os
import re
import sys

from reportlib import read_env

BEGIN = "<!-- bench-core:begin (written by scripts/bench.sh core; edits here are overwritten) -->"
END = "<!-- bench-core:end -->"

KEY_SETS = [("hot_key", "1 hot key"), ("100k_keys", "100 000 keys"), ("1M_keys", "1 000 000 keys")]
THREADS = [("1_thread", 1), ("2_threads", 2)]
# The speed goal covers these key sets; 1M keys is measured, without a goal.
GOAL_KEY_SETS = {"hot_key", "100k_keys"}
MEMORY_GOAL_BYTES = 128
# Flat cost: decisions/s at the most keys of the series at least this share of that at the fewest.
SERIES_GOAL = 0.8

PARTS = [
    ("parts/validate_ids", "validate user_id and endpoint"),
    ("parts/rules_load_and_lookup", "load the rules from an `ArcSwap` and look up the rule (the async path; `check` uses a per-thread cache)"),
    ("parts/clock/drl_system_clock", "clock: drl `SystemClock` (quanta, TSC)"),
    ("parts/clock/governor_quanta", "clock: governor's default (quanta, TSC)"),
    ("parts/hash/drl_fingerprint_siphash13_128",
     "key hash: drl fingerprint (SipHash-1-3, 128 bit, from the rule's prefix: header, domain, values)"),
    ("parts/hash/drl_fingerprint_without_rule_prefix",
     "key hash: drl fingerprint hashing the rule's identity too (a key without a `RulePrefix`)"),
    ("parts/hash/governor_string_siphash13_64",
     "key hash: governor's map (std `RandomState`, SipHash-1-3, 64 bit, composite string)"),
    ("parts/mutex_lock_unlock", "uncontended `Mutex` lock + unlock"),
    ("parts/step/sliding_window_admit", "algorithm step: sliding window, admit"),
    ("parts/step/sliding_window_deny", "algorithm step: sliding window, deny (key full; repeats are then answered from the denial cache)"),
    ("parts/step/token_bucket_admit", "algorithm step: token bucket (GCRA, as governor), admit"),
    ("parts_100k_keys/memory_store_check_now",
     "100k keys: `MemoryStore::check_now` (fingerprint, shard lock, slot, step), shuffled order"),
]


def load_estimates(root, since):
    """full_id -> (ns, low, high) for every benchmark criterion wrote after `since`."""
    stamp = os.path.getmtime(since)
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        estimates_path = os.path.join(dirpath, "estimates.json")
        if os.path.getmtime(estimates_path) < stamp:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        with open(estimates_path) as f:
            est = json.load(f)
        # Criterion reports the slope of the linear fit when it has one, the mean otherwise.
        e = est.get("slope") or est["mean"]
        ci = e["confidence_interval"]
        found[bench["full_id"]] = (e["point_estimate"], ci["lower_bound"], ci["upper_bound"])
    return found


def fields(line):
    """`key=value` pairs of one output line."""
    return dict(f.split("=", 1) for f in line.split() if "=" in f)


def load_limiter(log):
    """(key set, threads id) -> result fields, and the series points, from the limiter bench."""
    results, series = {}, []
    with open(log) as f:
        for line in f:
            if line.startswith("result "):
                _, key_set, threads_id = line.split()[:3]
                results[(key_set, threads_id)] = fields(line)
            elif line.startswith("series "):
                series.append(fields(line))
    return results, series


def fmt_ns(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 10_000 else f"{ns:.0f} ns" if ns >= 100 else f"{ns:.1f} ns"


def fmt_share(percent):
    if percent is None:
        return "?"
    return f"{percent:.1f}%" if percent >= 1 else f"{percent:.3f}%"


def fmt_rate(ns):
    per_s = 1e9 / ns
    return f"{per_s / 1e6:.2f} M/s" if per_s >= 1e6 else f"{per_s / 1e3:.0f} k/s"


def speed_table(results):
    rows = [
        "| key set | threads | drl decisions/s | governor decisions/s | drl ÷ governor "
        "| admitted drl / governor | goal ≥ 1.0× |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    verdicts = []
    for key_set, label in KEY_SETS:
        for threads_id, threads in THREADS:
            r = results.get((key_set, threads_id))
            if r is None:
                continue
            ratio = float(r["ratio"])
            if key_set in GOAL_KEY_SETS:
                goal = "met" if ratio >= 1.0 else "**missed**"
                verdicts.append((f"{label}, {threads} thread{'s' if threads > 1 else ''}", ratio))
            else:
                goal = "(no goal)"
            shares = " / ".join(
                fmt_share(float(r[k].rstrip("%"))) for k in ("drl_admitted", "governor_admitted"))
            rows.append(
                f"| {label} | {threads} | {fmt_per_s(float(r['drl']))} "
                f"| {fmt_per_s(float(r['governor']))} | {ratio:.2f}× | {shares} | {goal} |"
            )
    return rows, verdicts


def fmt_per_s(per_s):
    return f"{per_s / 1e6:.2f} M/s" if per_s >= 1e6 else f"{per_s / 1e3:.0f} k/s"


def fmt_count(n):
    return f"{n:,}".replace(",", " ")


def series_table(series):
    if not series:
        return [], None
    rows = ["| live keys | drl decisions/s | drl p99 per check | governor decisions/s "
            "| governor p99 per check | drl ÷ governor |", "|--:|--:|--:|--:|--:|--:|"]
    for p in series:
        drl, gov = float(p["drl"]), float(p["governor"])
        rows.append(f"| {fmt_count(int(p['keys']))} | {fmt_per_s(drl)} "
                    f"| {float(p['p99_ns_per_check']):.0f} ns | {fmt_per_s(gov)} "
                    f"| {float(p['governor_p99_ns_per_check']):.0f} ns | {drl / gov:.2f}× |")
    first, last = series[0], series[-1]
    growth = float(last["drl"]) / float(first["drl"])
    p99 = float(last["p99_ns_per_check"]) / float(first["p99_ns_per_check"])
    gov_growth = float(last["governor"]) / float(first["governor"])
    return rows, (int(first["keys"]), int(last["keys"]), growth, p99, gov_growth)


def parts_table(est):
    rows = ["| step | time (95% CI) |", "|---|--:|"]
    for full_id, label in PARTS:
        if full_id in est:
            ns, lo, hi = est[full_id]
            rows.append(f"| {label} | {fmt_ns(ns)} ({fmt_ns(lo)} – {fmt_ns(hi)}) |")
    return rows


def memory_verdict(memory_md):
    """Bytes per key of the default sliding window (the larger of its two columns)."""
    for line in memory_md.splitlines():
        if line.startswith("| drl sliding_window, precision 60, N = 100 ("):
            cells = [c.strip() for c in line.strip("|").split("|")]
            return max(float(cells[1]), float(cells[2]))
    return None


def section(args):
    env = read_env(args.machine)
    est = load_estimates(args.criterion, args.since)
    results, series = load_limiter(args.limiter)
    with open(args.memory) as f:
        memory_md = f.read().strip()

    speed, verdicts = speed_table(results)
    series_rows, series_verdict = series_table(series)
    bytes_per_key = memory_verdict(memory_md)
    out = [BEGIN, "", "## Core: `check_and_increment` and memory per key", ""]
    out += [
        f"*{env.get('mode', '')}, {env.get('date', '')}, commit {env.get('commit', '?')}.*",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {env.get('cpu', '?')} |",
        f"| cores | {env.get('cores', '?')} |",
        f"| memory | {env.get('memory', '?')} |",
        f"| kernel | {env.get('kernel', '?')} |",
        f"| virtualization | {env.get('virtualization', '?')} |",
        f"| compiler | {env.get('rustc', '?')} |",
        f"| load average (1, 5, 15 min) | {env.get('load_start', '?')} at the start, "
        f"{env.get('load_end', '?')} at the end |",
        "",
    ]
    if env.get("note"):
        out += [f"**Note:** {env['note']}", ""]
    out += [
        "### Speed",
        "",
        "Reproduce: `scripts/bench.sh core` (bench `crates/drl-core/benches/limiter.rs`: drl and "
        "governor take turns in one process, the order flipping every round; each figure is the "
        "median of the rounds, the ratio the median of the rounds' ratios). Both limiters enforce "
        "10 000 per minute per key: drl `sliding_window` at the default precision (60 buckets, "
        "guarantees P), governor's keyed GCRA (`RateLimiter::keyed`, `DashMap`, quanta clock). "
        "Keys are visited in a shuffled order, every key inserted beforehand; on 100k and 1M keys "
        "every check is admitted, on the hot key both admit their 10 000 and deny the rest. With "
        "2 threads decisions/s is the aggregate of both. drl is measured after one sweep of its "
        "store, as its background sweeper runs in a deployment.",
        "",
    ]
    out += speed
    if verdicts:
        missed = [f"{name} ({ratio:.2f}×)" for name, ratio in verdicts if ratio < 1.0]
        out += [
            "",
            "Goal (drl ≥ 1.0× governor's throughput on one hot key and on 100 000 keys, 1 and 2 "
            "threads): "
            + ("**met** in every case." if not missed else "**missed** for " + "; ".join(missed) + "."),
        ]
    if series_rows:
        first, last, growth, p99, gov_growth = series_verdict
        out += ["", "### Cost against the number of live keys", "",
                "The same bench with `--series`: both limiters in turns, 1 thread, 65 535 per "
                "minute per key (every check admitted), every key live and visited in a shuffled "
                "order; p99 of the time of 64 consecutive checks, per check.", ""]
        out += series_rows
        verdict = "met" if growth >= SERIES_GOAL and p99 <= 1.2 else "**missed**"
        out += ["", f"Goal (decisions/s at {fmt_count(last)} keys ≥ {SERIES_GOAL}× that at "
                f"{fmt_count(first)}, p99 within 1.2×): {verdict} for drl ({growth:.2f}×, p99 "
                f"{p99:.2f}×); governor's decisions/s go {gov_growth:.2f}× over the same series."]
    out += ["", "### Where the time of one check goes", "",
            "Criterion bench `crates/drl-core/benches/parts.rs`: each step of a check on its own.", ""]
    out += parts_table(est)
    out += ["", "### Memory per active key and the sweep", "",
            "`cargo run --release -p drl-core --example memory -- --keys "
            f"{env.get('memory_keys', '?')}`: RSS growth divided by the number of keys, each "
            "limiter in a fresh process (map, state, allocator overhead and, for governor, the "
            "key string it keeps).", ""]
    out += [memory_md, ""]
    if bytes_per_key is not None:
        verdict = "met" if bytes_per_key <= MEMORY_GOAL_BYTES else "**missed**"
        out += [f"Goal (≤ {MEMORY_GOAL_BYTES} bytes per active key at the default precision, map "
                f"overhead included): {verdict} ({bytes_per_key:.0f} bytes).", ""]
    out += [END]
    return "\n".join(out) + "\n"


def main(argv):
    p = argparse.ArgumentParser(prog="report.py core", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--criterion")
    p.add_argument("--since")
    p.add_argument("--machine")
    p.add_argument("--limiter")
    p.add_argument("--memory")
    args = p.parse_args(argv)
    missing = [n for n in ("criterion", "since", "machine", "limiter", "memory") if not getattr(args, n)]
    if missing:
        p.error("missing " + ", ".join("--" + n for n in missing))
    sys.stdout.write(section(args))
    return 0


