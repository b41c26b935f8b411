"""python -m vld.report --results results/eval --out results/report [--profile NAME]"""

from __future__ import annotations

import argparse

from vld.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vld.report",
                                     description="Build the report from variant and lm-eval results.")
    parser.add_argument("--results", nargs="+", required=True,
                        help="result JSON files or directories searched for them")
    parser.add_argument("--out", required=True, help="report directory (replaced atomically)")
    parser.add_argument("--profile", default="default", help="profile name shown in the report")
    args = parser.parse_args(argv)

    from vld.errors import fail
    from vld.report.build import build_report, load_results
    from vld.report.lm_table2 import load_lm_results

    if not load_results(args.results) and not load_lm_results(args.results):
        fail("--results", f"no variant or lm-eval results found in {' '.join(args.results)}")
    written = build_report(args.results, args.out, args.profile)
    print(f"vld.report: wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
