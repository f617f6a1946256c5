"""What the report modules of scripts/bench/report.py share: number formats, the machine file,
and splicing a generated section into docs/benchmarks.md."""

import re
import sys


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
