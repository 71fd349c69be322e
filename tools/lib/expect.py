#!/usr/bin/env python3
"""Judges a firmware run against the expectations of a test case file (tests/cases/*.case).

    tools/lib/expect.py args CASE          prints the case's qemu-run.sh arguments, one a line
    tools/lib/expect.py timeout CASE       prints its timeout in seconds (default 180)
    tools/lib/expect.py check CASE LOG STATUS
                                           checks LOG (the run's output, LF line ends) and
                                           STATUS (qemu-run.sh's exit status); prints one line
                                           per unmet expectation and exits 1 if there is any

A case file is a layout run plus the facts that must hold, one per line ('#' starts a
comment):

    run: --scenario dedup --smp 2        qemu-run.sh arguments (--no-build is added)
    timeout: 240                         seconds before the run counts as hung
    exit: 0                              qemu-run.sh's exit status
    result: PASS                         the RESULT line of the run's scenario
    vm: * exit=0                         every VM (at least one) ended RESULT vm:NAME PASS exit=0;
                                         `vm: NAME exit=N` for one VM (PASS only when N is 0)
    stat: frames_leaked == 0             a STAT figure against an expression of numbers and
    stat: pages_sharing >= 0.99 * mergeable_pages      other STAT figures (+ - * / and
                                         parentheses; ops == != >= <= > <)
    line: ^\\[dup0\\] memguest: verified [0-9]+ pages, 0 bad$
                                         some output line matches the regular expression
    no-line: ^PANIC                      no output line matches it

Only the Python standard library is used.
"""

import ast
import operator
import re
import shlex
import sys

COMPARISONS = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
KEYS = ("run", "timeout", "exit", "result", "vm", "stat", "line", "no-line")


class CaseError(Exception):
    """A case file that cannot be read as one."""


def read_case(path):
    """The case's (key, value, line number) entries."""
    entries = []
    with open(path, encoding="utf-8") as case:
        for number, raw in enumerate(case, 1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            key, sep, value = text.partition(":")
            key, value = key.strip(), value.strip()
            if not sep or key not in KEYS:
                raise CaseError(f"{path}:{number}: expected 'KEY: value' with KEY one of {', '.join(KEYS)}")
            entries.append((key, value, number))
    if sum(1 for key, _, _ in entries if key == "run") != 1:
        raise CaseError(f"{path}: exactly one 'run:' line is needed")
    return entries


def one(entries, key, default=None):
    values = [value for k, value, _ in entries if k == key]
    return values[-1] if values else default


def scenario_of(args):
    """The scenario the run names (qemu-run.sh's default otherwise)."""
    for i, arg in enumerate(args):
        if arg == "--scenario" and i + 1 < len(args):
            return args[i + 1]
    return "guests" if "--bundle" in args else "demo"


def stats_of(lines):
    """STAT name=value figures (the last of each name; `STAT sample` lines are series)."""
    stats = {}
    for line in lines:
        match = re.match(r"^STAT ([A-Za-z0-9_]+)=(-?[0-9]+(?:\.[0-9]+)?)$", line)
        if match:
            stats[match.group(1)] = float(match.group(2))
    return stats


def evaluate(node, stats):
    if isinstance(node, ast.Expression):
        return evaluate(node.body, stats)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id not in stats:
            raise KeyError(node.id)
        return stats[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        return ARITHMETIC[type(node.op)](evaluate(node.left, stats), evaluate(node.right, stats))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -evaluate(node.operand, stats)
    raise CaseError(f"not an arithmetic expression: {ast.dump(node)}")


def check_stat(text, stats):
    """None if `NAME OP EXPR` holds, else why not."""
    match = re.match(r"^([A-Za-z0-9_]+)\s*(==|!=|>=|<=|>|<)\s*(.+)$", text)
    if not match:
        raise CaseError(f"stat: expected 'NAME OP EXPRESSION', got '{text}'")
    name, op, expression = match.groups()
    if name not in stats:
        return f"no STAT {name}"
    try:
        want = evaluate(ast.parse(expression, mode="eval"), stats)
    except KeyError as missing:
        return f"no STAT {missing.args[0]} (in '{text}')"
    except SyntaxError as error:
        raise CaseError(f"stat: '{expression}' is not an expression") from error
    if COMPARISONS[op](stats[name], want):
        return None
    return f"STAT {name}={stats[name]:g}, wanted {op} {expression} = {want:g}"


def check_vm(text, lines):
    match = re.match(r"^(\S+)\s+exit=([0-9]+)$", text)
    if not match:
        raise CaseError(f"vm: expected 'NAME|* exit=N', got '{text}'")
    name, code = match.group(1), int(match.group(2))
    ends = {}
    for line in lines:
        end = re.match(r"^RESULT vm:(\S+) (PASS|FAIL)(?: exit=([0-9]+))?(.*)$", line)
        if end:
            ends[end.group(1)] = (end.group(2), end.group(3), end.group(4).strip())
    verdict = "PASS" if code == 0 else "FAIL"
    names = sorted(ends) if name == "*" else [name]
    if not names:
        return ["no RESULT vm: line at all"]
    problems = []
    for vm in names:
        if vm not in ends:
            problems.append(f"no RESULT vm:{vm} line")
            continue
        got, got_code, rest = ends[vm]
        if got != verdict or got_code != str(code):
            problems.append(f"vm {vm} ended {got} exit={got_code} {rest}".rstrip() + f", wanted {verdict} exit={code}")
    return problems


def check(case, log, status):
    entries = read_case(case)
    args = shlex.split(one(entries, "run"))
    with open(log, encoding="utf-8", errors="replace") as output:
        lines = [line.rstrip("\n") for line in output]
    stats = stats_of(lines)
    problems = []
    want_exit = one(entries, "exit", "0")
    if str(status) != want_exit:
        problems.append(f"exit status {status}, wanted {want_exit}")
    for key, value, number in entries:
        try:
            if key == "result":
                scenario = scenario_of(args)
                if not any(line.startswith(f"RESULT {scenario} {value}") for line in lines):
                    problems.append(f"no 'RESULT {scenario} {value}' line")
            elif key == "vm":
                problems.extend(check_vm(value, lines))
            elif key == "stat":
                why = check_stat(value, stats)
                if why:
                    problems.append(why)
            elif key == "line":
                if not any(re.search(value, line) for line in lines):
                    problems.append(f"no line matches /{value}/")
            elif key == "no-line":
                hit = next((line for line in lines if re.search(value, line)), None)
                if hit is not None:
                    problems.append(f"a line matches /{value}/: {hit[:100]}")
        except re.error as error:
            raise CaseError(f"{case}:{number}: bad regular expression: {error}") from error
    return problems


def main(argv):
    try:
        if len(argv) == 3 and argv[1] == "args":
            print("\n".join(shlex.split(one(read_case(argv[2]), "run"))))
            return 0
        if len(argv) == 3 and argv[1] == "timeout":
            print(one(read_case(argv[2]), "timeout", "180"))
            return 0
        if len(argv) == 5 and argv[1] == "check":
            problems = check(argv[2], argv[3], int(argv[4]))
            for problem in problems:
                print(problem)
            return 1 if problems else 0
    except (CaseError, OSError, ValueError) as error:
        print(f"expect.py: {error}", file=sys.stderr)
        return 2
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
