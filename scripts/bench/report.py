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
  report.py peers body|h2load|merge|report ...
      drl next to Kuadrant Limitador (scripts/bench/peers.sh); see report_peers.py.
  report.py splice SECTION DOCS
      puts SECTION (a file that opens with its `<!-- NAME:begin ... -->` marker) in place of the
      section of that name in DOCS, or appends it.

Every section is printed to stdout; the shell scripts splice it into the docs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reportlib import splice  # noqa: E402


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
    elif command == "peers":
        import report_peers
        report_peers.main(rest)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
