"""The paper's tables and figures from variant results, with the paper's numbers beside.

Entry points: `vld.report.build.build_report(results, out_dir, profile_name)` and
`python -m vld.report --results DIR --out DIR [--profile NAME]`.
"""
