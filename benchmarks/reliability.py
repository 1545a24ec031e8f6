"""Reliability figures of ``rsclip-map``: the hostile cases of issue #13, judged and counted.

Runs every case of ``tests/reliability/hostile_cases.py`` (the suite's definitions, one home) and
writes a Markdown report: per case whether it was handled (expected exit status, one clear
``Error:`` line naming the culprit, no traceback), whether the inputs and earlier outputs are
intact and whether nothing was left behind (no ``.partial-`` files, no outputs of a failed run).

    python benchmarks/reliability.py --out benchmarks/results/reliability.md
    python benchmarks/reliability.py --code /path/to/older/checkout   # the same cases on other code
    python benchmarks/reliability.py --baseline /path/to/older/checkout --out ...  # both, side by side
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="Markdown report to write (default: print only)")
    parser.add_argument("--code", type=Path, help="checkout whose rsclip_core is tested [this one]")
    parser.add_argument("--fast", action="store_true", help="skip the slow cases (signals to subprocesses)")
    parser.add_argument("-k", dest="only", help="only cases whose name contains this")
    parser.add_argument("--baseline", type=Path, help="also run the cases on this checkout (e.g. before #13)")
    parser.add_argument("--baseline-label", default=None, help="how the report names the baseline")
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # outcomes for a --baseline parent
    args = parser.parse_args()
    baseline = None
    if args.baseline is not None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "baseline.json"
            cmd = [sys.executable, __file__, "--code", str(args.baseline), "--json", str(out)]
            cmd += ["--fast"] if args.fast else []
            cmd += ["-k", args.only] if args.only else []
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            baseline = {o["name"]: o for o in json.loads(out.read_text())}
    if args.code is not None:
        os.environ["RSCLIP_CODE"] = str(args.code.resolve())
        sys.path.insert(0, str(args.code.resolve()))
    sys.path.insert(0, str(REPO / "tests" / "reliability"))
    import hostile_cases as hc

    mount = hc.can_mount()
    cases = [c for c in hc.CASES if not (args.fast and c.slow) and (not args.only or args.only in c.name)]
    outcomes = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rsclip-reliability-") as tmp:
        env = hc.Env.create(Path(tmp) / "env")
        for n, case in enumerate(cases):
            if case.needs_mount and not mount:
                outcomes.append(hc.Outcome(case.name, case.group, False, False, False, "", 0.0,
                                           skipped="needs mount (not permitted here)"))
                continue
            workdir = Path(tmp) / f"case{n:02d}"
            try:
                outcome = hc.run_case(case, workdir, env)
                outcome.detail = outcome.detail.replace(str(workdir), "<case>")
            except Exception as exc:  # a case whose set-up or judging crashed counts as not handled
                outcome = hc.Outcome(case.name, case.group, False, False, False,
                                     f"harness: {type(exc).__name__}: {exc}", 0.0)
            outcomes.append(outcome)
            mark = "ok  " if outcome.passed else ("skip" if outcome.skipped else "FAIL")
            print(f"{mark} {case.name:45s} {outcome.seconds:5.1f}s  {outcome.detail[:110]}", flush=True)
    wall = time.perf_counter() - start
    if args.json is not None:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes]))
        return
    report = render(outcomes, args, wall, mount, baseline)
    print(report.split("\n## ")[0])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"wrote {args.out}")


def _tally(ran: list[dict]) -> Counter:
    tally: Counter = Counter()
    for o in ran:
        tally["handled"] += o["handled"]
        tally["intact"] += o["intact"]
        tally["clean"] += o["clean"]
        tally["passed"] += o["handled"] and o["intact"] and o["clean"]
    return tally


def render(outcomes: list, args: argparse.Namespace, wall: float, mount: bool,
           baseline: dict[str, dict] | None = None) -> str:
    ran = [o for o in outcomes if not o.skipped]
    tally = _tally([o.__dict__ for o in ran])
    base = _tally([baseline[o.name] for o in ran if o.name in baseline]) if baseline else None
    command = "python benchmarks/reliability.py"
    command += f" --code {args.code}" if args.code else ""
    command += " --fast" if args.fast else ""
    command += f" -k {args.only}" if args.only else ""
    command += f" --baseline {args.baseline}" if args.baseline else ""
    command += f" --baseline-label '{args.baseline_label}'" if args.baseline_label else ""
    command += f" --out {args.out}" if args.out else ""
    n = len(ran)
    lines = [
        "# Reliability: hostile cases of `rsclip-map` (issue #13)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall {wall:.0f} s. "
        f"Case definitions: `tests/reliability/hostile_cases.py` (also run by `tests/reliability/test_hostile.py`). "
        f"Mounts (read-only bind, tmpfs) {'available' if mount else 'not permitted: those cases skipped'}.",
        "",
        *_figures(tally, base, n, len(outcomes) - n, args.baseline_label or args.baseline),
        "",
        "## Cases",
        "",
        "| group | case | handled | intact | clean | s | first error / warning line, or what went wrong |"
        + (" baseline |" if baseline else ""),
        "|---|---|:-:|:-:|:-:|--:|---|" + ("---|" if baseline else ""),
    ]
    yes = {True: "yes", False: "**no**"}
    for o in outcomes:
        detail = (o.skipped or o.detail).replace("|", "\\|")
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        extra = ""
        if baseline:
            b = baseline.get(o.name)
            extra = " - |" if b is None or b["skipped"] else (
                " ok |" if b["handled"] and b["intact"] and b["clean"] else
                f" fails: {(b['detail'][:70]).replace('|', '/')} |")
        if o.skipped:
            lines.append(f"| {o.group} | {o.name} | - | - | - | - | {detail} |{extra}")
        else:
            lines.append(f"| {o.group} | {o.name} | {yes[o.handled]} | {yes[o.intact]} | {yes[o.clean]} | "
                         f"{o.seconds:.1f} | {detail} |{extra}")
    return "\n".join(lines) + "\n"


def _figures(tally: Counter, base: Counter | None, n: int, skipped: int, baseline: object) -> list[str]:
    rows = [("handled (expected exit; one clear `Error:` line naming the culprit; no traceback)", "handled"),
            ("inputs and earlier outputs intact", "intact"),
            ("nothing left behind (no `.partial-` files, no outputs of a failed run)", "clean"),
            ("**all three**", "passed")]
    head = "| figure | this code |" + (f" baseline: {baseline} |" if base is not None else "")
    lines = [head, "|---|---:|" + ("---:|" if base is not None else ""),
             f"| cases tried | {n} |" + (f" {n} |" if base is not None else "")]
    for label, key in rows:
        lines.append(f"| {label} | {tally[key]} / {n} |" + (f" {base[key]} / {n} |" if base is not None else ""))
    lines.append(f"| skipped | {skipped} |" + (" |" if base is not None else ""))
    return lines


if __name__ == "__main__":
    main()
