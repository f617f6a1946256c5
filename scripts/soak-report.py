#!/usr/bin/env python3
"""The trend of one store's soak (scripts/soak.sh) from its samples, and the pass/fail.

    scripts/soak-report.py SAMPLES.csv STORE TOLERANCE_MIB TOLERANCE_PCT

Prints a Markdown table (requests, errors, the rate reached, RSS at baseline / peak / end of
load / after the drain, the RSS slope over the second half of the load, the p99 of the first and
second halves, Redis keys and used_memory) and a PASS or FAIL line; exits 1 on FAIL.

Pass: no error, RSS after the drain within baseline + TOLERANCE_MIB + TOLERANCE_PCT% of the
growth from baseline to peak, Redis keys back to baseline and used_memory within 4 MiB of it;
a load that raised the memory holding the keys (the node's RSS on the memory store, Redis's
used_memory on Redis) by less than twice the tolerance is inconclusive, which fails too.
"""
import csv
import sys

REDIS_TOLERANCE = 4 * 2**20


def mib(kib):
    return float(kib) / 1024


def slope(points):
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in points) / sxx * 60


def median(xs):
    return sorted(xs)[len(xs) // 2] if xs else float("nan")


def main():
    path, store = sys.argv[1], sys.argv[2]
    tolerance_mib, tolerance_pct = float(sys.argv[3]), float(sys.argv[4])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    base = rows[0]
    load = [r for r in rows if r["phase"] == "load"]
    drain = [r for r in rows if r["phase"] == "drain"]
    if not load:
        print(f"{store}: FAIL: no load sample")
        return 1
    first, second = load[: len(load) // 2] or load, load[len(load) // 2 :]
    p99 = lambda rs: median([float(r["p99_us"]) / 1000 for r in rs])
    requests = sum(int(r["requests"]) for r in load)
    decisions = sum(int(r["decisions"]) for r in load)
    errors = sum(int(r["errors"]) for r in load)
    load_s = int(load[-1]["t_s"])
    base_rss = mib(base["rss_kib"])
    peak = max(mib(r["rss_kib"]) for r in rows)
    final = drain[-1] if drain else load[-1]
    growth = peak - base_rss
    allowed = tolerance_mib + growth * tolerance_pct / 100
    verdict = []

    print(f"\n## {store}\n")
    print("| figure | value |")
    print("|---|--:|")
    print(f"| requests / decisions (errors) | {requests} / {decisions} ({errors}) |")
    print(f"| rate reached (requests over the load's {load_s} s) | {requests / max(load_s, 1):.0f}/s |")
    print(f"| RSS at baseline / peak / end of load | {base_rss:.1f} / {peak:.1f} / {mib(load[-1]['rss_kib']):.1f} MiB |")
    print(f"| RSS slope, second half of the load | {slope([(int(r['t_s']), mib(r['rss_kib'])) for r in second]):+.2f} MiB/min |")
    print(f"| p99 per segment, median of first / second half | {p99(first):.1f} / {p99(second):.1f} ms |")
    print(f"| p50 per segment, median of the load | {median([float(r['p50_us']) / 1000 for r in load]):.1f} ms |")
    print(f"| highest segment p99 / max | {max(float(r['p99_us']) for r in load) / 1000:.1f} / {max(float(r['max_us']) for r in load) / 1000:.1f} ms |")
    print(f"| RSS {int(final['t_s']) - load_s} s after the load | {mib(final['rss_kib']):.1f} MiB (baseline + {allowed:.1f} MiB allowed: {tolerance_mib:.0f} MiB + {tolerance_pct:.0f}% of the growth) |")
    print(f"| share of the growth given back | {(peak - mib(final['rss_kib'])) / growth * 100 if growth > 0 else 0:.0f}% |")
    if base["redis_keys"]:
        peak_keys = max(int(r["redis_keys"]) for r in rows)
        peak_used = max(int(r["redis_used_bytes"]) for r in rows)
        print(f"| Redis keys at baseline / peak / after | {base['redis_keys']} / {peak_keys} / {final['redis_keys']} |")
        print(f"| Redis used_memory at baseline / peak / after | {int(base['redis_used_bytes']) / 2**20:.1f} / {peak_used / 2**20:.1f} / {int(final['redis_used_bytes']) / 2**20:.1f} MiB |")
        if int(final["redis_keys"]) > int(base["redis_keys"]):
            verdict.append("Redis keys not back to baseline")
        if int(final["redis_used_bytes"]) > int(base["redis_used_bytes"]) + REDIS_TOLERANCE:
            verdict.append("Redis used_memory not back to baseline")
        redis_growth = (peak_used - int(base["redis_used_bytes"])) / 2**20
        if redis_growth < 2 * REDIS_TOLERANCE / 2**20:
            verdict.append(f"inconclusive: the load raised used_memory by only {redis_growth:.1f} MiB")
    loads = [float(r["load1"]) for r in rows]
    print(f"| load average (1 min) during the run | {min(loads):.1f} to {max(loads):.1f} |")
    if errors:
        verdict.append(f"{errors} errors")
    if mib(final["rss_kib"]) > base_rss + allowed:
        verdict.append("RSS not back to baseline")
    if not base["redis_keys"] and growth < 2 * tolerance_mib:
        verdict.append(f"inconclusive: the load raised RSS by only {growth:.1f} MiB")
    print(f"\n{store}: " + ("PASS" if not verdict else "FAIL: " + ", ".join(verdict)))
    return 1 if verdict else 0


if __name__ == "__main__":
    sys.exit(main())
