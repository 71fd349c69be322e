#!/usr/bin/env python3
"""Checks that a service scenario's summaries of memory saved agree (used by tools/test.sh).

    check-saved.py LOG [--table] [--no-prompt]

LOG is a run's output (CR LF or LF). Checks, per service (dedup, balloon, swap):
- the `STAT sample` lines, read with tools/plot's own parser (the series it draws): the
  last one shows `STAT <service>_saved_pages=`, the most in any of them is
  `STAT <service>_saved_pages_peak=`;
- swap's figure is net: `swap_saved_pages` = `swap_pages_out` - `swap_store_frames` (when
  the run prints them);
- with --table: the table of memory saved is there, shows the same figures (pages, and
  MiB as the firmware rounds them), and is the last output: after every STAT line, with
  only the scenario's RESULT line after it;
- with --no-prompt (a run nobody typed into): no `mipsvisor> ` prompt anywhere;
- always: a prompt never shares a line with other output (it may only start a line, and
  no STAT/RESULT/BENCH text follows it).
Prints what it compared; exits 1 on the first disagreement.
"""

import importlib.machinery
import importlib.util
import os
import re
import sys

SERVICES = ("dedup", "balloon", "swap")
PROMPT = "mipsvisor> "


def fail(message):
    print("check-saved: " + message)
    sys.exit(1)


def load_plot():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "plot")
    loader = importlib.machinery.SourceFileLoader("mipsvisor_plot", path)
    spec = importlib.util.spec_from_loader("mipsvisor_plot", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def mib(pages):
    """Pages as the firmware prints MiB: three decimals cut (not rounded), sign kept."""
    size = abs(pages) * 4096
    return "%s%d.%03d" % ("-" if pages < 0 else "", size >> 20,
                          ((size % (1 << 20)) * 1000) >> 20)


def main():
    args = sys.argv[1:]
    want_table = "--table" in args
    no_prompt = "--no-prompt" in args
    logs = [a for a in args if not a.startswith("--")]
    if len(logs) != 1:
        fail("usage: check-saved.py LOG [--table] [--no-prompt]")
    with open(logs[0], encoding="utf-8", errors="replace") as handle:
        lines = [line.rstrip("\r") for line in handle.read().split("\n")]

    for number, line in enumerate(lines, 1):
        at = line.find(PROMPT)
        if at < 0:
            continue
        if no_prompt:
            fail("line %d: a prompt in a run nobody typed into: %r" % (number, line[:80]))
        if at > 0 or line.find(PROMPT, 1) >= 0:
            fail("line %d: a prompt inside other output: %r" % (number, line[:80]))
        if re.search(r"(STAT|RESULT|BENCH) ", line[len(PROMPT):]):
            fail("line %d: output glued to the prompt: %r" % (number, line[:80]))

    stats = {}
    for line in lines:
        match = re.match(r"STAT (\w+)=(-?\d+)$", line)
        if match:
            stats[match.group(1)] = int(match.group(2))
    samples, _, _, warnings = load_plot().parse_run(lines)
    if warnings:
        fail("tools/plot ignored sample lines: %s" % "; ".join(warnings))
    if not samples:
        fail("no STAT sample lines")
    figures = {}
    for service in SERVICES:
        key = "%s_saved_pages" % service
        if key not in stats or key + "_peak" not in stats:
            fail("no STAT %s= or STAT %s_peak=" % (key, key))
        end, peak = stats[key], stats[key + "_peak"]
        last = samples[-1][key]
        most = max(sample[key] for sample in samples)
        print("%-8s end %7d (last sample %7d)  peak %7d (most in a sample %7d)"
              % (service, end, last, peak, most))
        if last != end:
            fail("%s: last STAT sample shows %d, STAT %s=%d" % (service, last, key, end))
        if most != peak:
            fail("%s: most in a STAT sample %d, STAT %s_peak=%d" % (service, most, key, peak))
        figures[service] = (peak, end)
    if "swap_pages_out" in stats and "swap_store_frames" in stats:
        net = stats["swap_pages_out"] - stats["swap_store_frames"]
        print("swap     net %d = %d pages out - %d store frames"
              % (net, stats["swap_pages_out"], stats["swap_store_frames"]))
        if net != stats["swap_saved_pages"]:
            fail("swap_saved_pages=%d is not swap_pages_out - swap_store_frames = %d"
                 % (stats["swap_saved_pages"], net))

    heads = [n for n, line in enumerate(lines) if line.startswith("  memory saved per service")]
    if not want_table:
        return 0
    if len(heads) != 1:
        fail("%d tables of memory saved (1 expected)" % len(heads))
    head = heads[0]
    rows = {}
    for line in lines[head + 2:head + 2 + len(SERVICES)]:
        match = re.match(r"  (\w+) .*?(-?\d+) +(-?\d+\.\d{3}) +(-?\d+) +(-?\d+\.\d{3})$", line)
        if not match:
            fail("table row not understood: %r" % line)
        rows[match.group(1)] = match.groups()[1:]
    for service in SERVICES:
        if service not in rows:
            fail("the table has no %s row" % service)
        peak, end = figures[service]
        shown = rows[service]
        print("%-8s table: most %s pages %s MiB, end %s pages %s MiB" % ((service,) + shown))
        if (int(shown[0]), int(shown[2])) != (peak, end):
            fail("%s: the table shows most %s / end %s pages, the STAT lines %d / %d"
                 % (service, shown[0], shown[2], peak, end))
        if (shown[1], shown[3]) != (mib(peak), mib(end)):
            fail("%s: the table's MiB %s / %s do not match its pages (%s / %s)"
                 % (service, shown[1], shown[3], mib(peak), mib(end)))
    after = [line for line in lines[head + 2 + len(SERVICES):] if line.strip()]
    last_stat = max(n for n, line in enumerate(lines) if line.startswith("STAT "))
    if last_stat > head:
        fail("a STAT line after the table: %r" % lines[last_stat])
    if len(after) != 1 or not after[0].startswith("RESULT "):
        fail("after the table, only the RESULT line may follow; found %r" % after[:3])
    print("table is last, before %r" % after[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
