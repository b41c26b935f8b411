"""python -m vld.data.igsm --preset med --split train --n 500000 --seed 0 --out data/igsm/med_train

Every generator knob has a flag; a flag left out keeps the preset's value.
"""

from __future__ import annotations

import argparse
import sys
import time

from vld.errors import UserError, fail, run_cli


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, through run_cli, instead of usage + exit
        raise UserError(f"vld.data.igsm: {message}")


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail("--levels", f"expected comma-separated integers like 2,3,4, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m vld.data.igsm", description="Generate an iGSM data set (tokens + problems.jsonl).")
    p.add_argument("--preset", default="med", help="med (max_op 15, max_edge 20) or hard (max_op 21, max_edge 28)")
    p.add_argument("--split", required=True, help="train (template bins < train-bins) or test (the others)")
    p.add_argument("--n", type=int, required=True, help="number of problems")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory (replaced atomically; refuses dirs not written by vld)")
    p.add_argument("--op", type=int, default=None, help="fixed op for every problem (default: the light law over 1..max-op)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores); output does not depend on it")
    p.add_argument("--format", default=None, help="pq (problem then question) or qp")
    p.add_argument("--perm-level", type=int, default=None, help="5: full shuffle of sentences; 0..4: a random topological order, each sentence moved by at most L; 6: the order built")
    p.add_argument("--reask", action="store_true", default=None, help="ask a new parameter of each problem")
    p.add_argument("--train-bins", type=int, default=None, help="template bins 0..N-1 are train (default 16 of 23)")
    p.add_argument("--max-op", type=int, default=None)
    p.add_argument("--max-edge", type=int, default=None)
    p.add_argument("--levels", type=_levels, default=None, help="allowed numbers of layers, e.g. 2,3")
    p.add_argument("--min-width", type=int, default=None)
    p.add_argument("--max-width", type=int, default=None)
    p.add_argument("--lexicon", default=None, help="lexicon JSON file (default: the builtin lexicon)")
    p.add_argument("--lexicon-size", type=int, default=None, help="names kept per sub-category")
    p.add_argument("--hierarchies", type=int, default=None, help="hierarchies kept")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args):
    """The preset named by --preset with every flag given on the command line applied (a
    validated IgsmConfig, through IgsmConfig.from_dict: the one preset-plus-overrides builder)."""
    from vld.data.igsm.generator import IgsmConfig

    values = {
        "preset": args.preset,
        "format": args.format,
        "perm_level": args.perm_level,
        "reask": args.reask,
        "train_bins": args.train_bins,
        "max_op": args.max_op,
        "max_edge": args.max_edge,
        "levels": args.levels,
        "min_width": args.min_width,
        "max_width": args.max_width,
        "lexicon_path": args.lexicon,
        "lexicon_size": args.lexicon_size,
        "hierarchies": args.hierarchies,
    }
    return IgsmConfig.from_dict({k: v for k, v in values.items() if v is not None}, "igsm")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from vld.data.igsm.dataset import generate_dataset

    start = time.perf_counter()
    out = generate_dataset(cfg, args.split, args.n, args.seed, args.out, workers=args.workers, op=args.op, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(f"vld.data.igsm: wrote {args.n} {args.split} problems to {out} in {seconds:.1f} s ({args.n / seconds:.0f}/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
