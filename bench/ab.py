#!/usr/bin/env python3
"""A/B: ferry at two git refs, side by side on one moto_server, to show what a
change costs (or wins) on the data path.

    .venv/bin/python bench/ab.py --base REF [--head REF] [--rounds 2] [--quick]
                                 [--workloads randwrite,smallfiles,...] [--out FILE]

Not a test. Each ref gets a git worktree and a virtualenv of its own; the
virtualenv reuses this one's installed packages (a .pth line) with the ref's
tree first on the path, so only ferry's own code differs between the two.
bench/run.py's ferry workloads then run interleaved: for every workload group
and round, both refs run on fresh volumes one after the other, the order
alternating between rounds (base, head, then head, base, ...), so drift of the
machine during the run falls on both. Two rounds per ref (the default) show
the run-to-run spread.

The table has, per row, every round of each ref, the ratio head/base of their
means, and the spread: the larger of the two refs' (max - min) / mean. A ratio
further from 1 than the spread is marked: "worse" (a regression to fix or
explain) or "better". Runs as root, like bench/run.py.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import traceback
from pathlib import Path
from statistics import mean

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import run as R  # noqa: E402 - bench/run.py: the harness, the workloads, the Ferry system

FERRY_KEYS = [k for k, _, _ in R.WORKLOADS]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


class RefInstall:
    """A worktree at `ref` and a virtualenv whose `ferry` runs that tree's code."""

    def __init__(self, root: Path, label: str, ref: str) -> None:
        self.label, self.ref = label, ref
        self.sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
        self.wt = root / f"wt-{label}"
        self.venv = root / f"venv-{label}"
        R.log(f"{label}: {ref} = {self.sha[:12]} ({git('log', '-1', '--format=%s', self.sha)[:70]})")
        git("worktree", "add", "--detach", str(self.wt), self.sha)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], check=True)
        site = Path(sysconfig.get_path("purelib", vars={"base": str(self.venv), "platbase": str(self.venv)}))
        ours = sysconfig.get_path("purelib")
        # Plain path lines (not site dirs): this venv's editable install of ferry is not loaded, the ref's tree is.
        (site / "_ferry_ab.pth").write_text(f"{self.wt}\n{ours}\n")
        self.ferry = self.venv / "bin" / "ferry"
        # The entry point moved from fsd.cli to cli.main (issue 20): a ref has one or the other.
        self.ferry.write_text(f"#!{self.venv / 'bin' / 'python'}\nimport sys\n"
                              "try:\n    from cli.main import main\n"
                              "except ImportError:\n    from fsd.cli import main\n"
                              "sys.exit(main())\n")
        self.ferry.chmod(0o755)
        check = subprocess.run([str(self.venv / "bin" / "python"), "-c", "import fsd; print(fsd.__file__)"],
                               capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"}, cwd="/")
        if not check.stdout.strip().startswith(str(self.wt)):
            raise SystemExit(f"{label}: the virtualenv does not import the worktree's ferry: {check.stdout}"
                             f"{check.stderr}")

    def remove(self) -> None:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.wt)], capture_output=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
        shutil.rmtree(self.venv, ignore_errors=True)


def ferry_at(install: RefInstall, name: str) -> type[R.Ferry]:
    class FerryAt(R.Ferry):
        def __init__(self, h: R.Harness) -> None:
            self.name = name
            super().__init__(h)
            self.ferry = str(install.ferry)
            # the daemon's `-m cli` (`-m fsd.cli` in older refs) must not pick ferry up from the current directory
            self.env = dict(self.env, PYTHONSAFEPATH="1")
    return FerryAt


def run_ab(h: R.Harness, base: RefInstall, head: RefInstall, groups: list[str], rounds: int
           ) -> dict[str, dict[str, list[float]]]:
    """{label: {workload key: [value per round]}}"""
    out: dict[str, dict[str, list[float]]] = {base.label: {}, head.label: {}}
    h.start_moto()
    for group in groups:
        for r in range(rounds):
            order = (base, head) if r % 2 == 0 else (head, base)
            for inst in order:
                name = f"{inst.label}-{group}-{r + 1}".replace("_", "-")
                h.s3.create_bucket(Bucket=f"bench-{name}")
                h.workloads = set(R.WORKLOAD_GROUPS[group])
                sysobj = ferry_at(inst, name)(h)
                h.run_system(sysobj, ferry_local="randwrite_sync_local" in h.workloads)
                sysobj.teardown()
                for key, v in h.results.get(name, {}).items():
                    x = R.num(v)
                    if x is not None:
                        out[inst.label].setdefault(key, []).append(x)
                    else:
                        R.log(f"{name}: {key}: {v}")
    return out


def table(res: dict[str, dict[str, list[float]]], base: RefInstall, head: RefInstall, rounds: int) -> str:
    lines = [f"base = {base.ref} ({base.sha[:12]}), head = {head.ref} ({head.sha[:12]}); "
             f"{rounds} round(s) each, interleaved", "",
             "| workload | unit | base rounds | head rounds | head/base | spread | verdict |",
             "|---|---|---|---|---:|---:|---|"]
    units = {k: u for k, _, u in R.WORKLOADS}
    labels = {k: lab for k, lab, _ in R.WORKLOADS}
    for key in FERRY_KEYS:
        b, hd = res[base.label].get(key, []), res[head.label].get(key, [])
        if not b or not hd:
            continue
        ratio = mean(hd) / mean(b)
        spread = max((max(x) - min(x)) / mean(x) for x in (b, hd))
        verdict = "worse" if ratio < 1 - spread else "better" if ratio > 1 + spread else "same (within spread)"
        lines.append(f"| {labels[key]} | {units[key]} | {' / '.join(R.fmt(x) for x in b)} | "
                     f"{' / '.join(R.fmt(x) for x in hd)} | {ratio:.2f}x | {spread:.0%} | {verdict} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git ref of the baseline (e.g. main before a change)")
    ap.add_argument("--head", default="HEAD", help="git ref to compare with it (default HEAD)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per ref (default 2: shows the spread)")
    ap.add_argument("--quick", action="store_true", help="bench/run.py's --quick sizes")
    ap.add_argument("--workloads", help=f"comma-separated subset of {','.join(R.WORKLOAD_GROUPS)} (default all)")
    ap.add_argument("--size-mb", type=int)
    ap.add_argument("--runtime", type=int)
    ap.add_argument("--files", type=int)
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--workdir", help="parent of the temporary directory (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/ab.py must run as root (FUSE mounts, drop_caches)", file=sys.stderr)
        return 2
    groups = [w.strip() for w in args.workloads.split(",")] if args.workloads else list(R.WORKLOAD_GROUPS)
    bad = [g for g in groups if g not in R.WORKLOAD_GROUPS]
    if bad:
        ap.error(f"--workloads: unknown {', '.join(bad)}; known: {', '.join(R.WORKLOAD_GROUPS)}")
    R.ENV = R.clean_env()
    os.environ.clear()
    os.environ.update(R.ENV)
    hargs = argparse.Namespace(quick=args.quick, size_mb=args.size_mb, runtime=args.runtime, files=args.files,
                               system_budget=None, timeout_scale=args.timeout_scale, only="ferry",
                               workloads=None, workdir=args.workdir, keep=args.keep)
    h = R.Harness(hargs)
    installs: list[RefInstall] = []
    rc = 0
    try:
        base = RefInstall(h.root, "base", args.base)
        installs.append(base)
        head = RefInstall(h.root, "head", args.head)
        installs.append(head)
        res = run_ab(h, base, head, groups, args.rounds)
        text = table(res, base, head, args.rounds)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
    except KeyboardInterrupt:
        rc = 130
    except Exception:  # noqa: BLE001 - clean up whatever happened
        R.log("error:\n" + traceback.format_exc())
        rc = 1
    finally:
        try:
            h.cleanup()           # unmounts and stops everything under h.root first
        finally:
            for inst in installs:
                inst.remove()
    return rc


if __name__ == "__main__":
    sys.exit(main())
