#!/usr/bin/env python3
"""The one report script of the benchmark suite (`scripts/bench.sh`): turns the raw results a
sub-command wrote into its generated section of docs/benchmarks.md.

  report.py suite --out DIR --plots PLOTDIR
      the suite's section (memory store, key series, Redis) from DIR (machine.env, runs/,
      series/, profile/); renders bench-latency.svg and bench-keys.svg into PLOTDIR (gnuplot).
  report.py core --criterion DIR --since FILE --machine FILE --limiter LOG --memory MD
      the core section: drl against governor, the key series, the parts, memory per key.
  report.py server run --server-pid PID --out FILE.json -- DRL BENCH-ARGS...
      one `drl bench ... --json` with the CPU time of the server and of the bench sampled.
  report.py server report --machine machine.env --runs DIR
      the server section from the run files.
  report.py splice SECTION DOCS
      puts SECTION (a file that opens with its `<!-- NAME:begin ... -->` marker) in place of the
      section of that name in DOCS, or appends it.

Every section is printed to stdout; the shell scripts splice it into the docs.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def ms(us):
    """Microseconds as milliseconds, two decimals."""
    return f"{us / 1000:.2f}"


def fmt_rate(x):
    """A rate per second, with thousands separated by thin spaces."""
    return f"{x:,.0f}".replace(",", " ")


def read_env(path):
    """A `KEY=value` file as a dict."""
    values = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            values[key] = value
    return values


def splice(section_path, docs_path):
    """Replaces the section of `docs_path` that `section_path`'s begin marker names."""
    with open(section_path) as f:
        text = f.read().strip("\n")
    marker = re.match(r"<!-- ([\w-]+):begin", text)
    if not marker:
        sys.exit(f"{section_path}: a section opens with its <!-- NAME:begin --> marker")
    name = marker.group(1)
    begin_line, end_line = f"<!-- {name}:begin", f"<!-- {name}:end -->"
    try:
        with open(docs_path) as f:
            docs = f.read()
    except FileNotFoundError:
        docs = ("# Benchmarks\n\nMeasured figures, each with the machine it ran on. Speed goals "
                "live here, not in timed tests.\n")
    begin = docs.find(begin_line)
    end = docs.find(end_line)
    if begin >= 0 and end > begin:
        docs = docs[:begin] + text + docs[end + len(end_line):]
    else:
        docs = docs.rstrip("\n") + "\n\n" + text + "\n"
    with open(docs_path, "w") as f:
        f.write(docs)


def main():
    argv = sys.argv[1:]
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "splice" and len(rest) == 2:
        splice(*rest)
    elif command == "suite":
        import report_suite
        report_suite.main(rest)
    elif command == "core":
        import report_core
        sys.exit(report_core.main(rest))
    elif command == "server":
        import report_server
        report_server.main(rest)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
