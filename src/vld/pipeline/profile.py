"""Select a profile: `python -m vld.pipeline.profile NAME` writes params.yaml from
conf/profiles/NAME.yaml (validated first; params.yaml is replaced atomically).

    python -m vld.pipeline.profile --list        # the profiles and their descriptions
    python -m vld.pipeline.profile paper         # the paper's grid (multi-GPU machine)
    python -m vld.pipeline.profile default       # back to the 2-core CPU profile

`dvc repro` then re-runs exactly the stages whose params changed. Nothing else is edited:
profiles differ only in params.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vld.errors import fail, run_cli

PROFILES_DIR = Path("conf/profiles")


def profiles(directory: Path = PROFILES_DIR) -> dict[str, Path]:
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))}


def select(name: str, target: Path = Path("params.yaml"), directory: Path = PROFILES_DIR) -> Path:
    from vld.atomic import write_text
    from vld.pipeline.params import load_pipeline

    table = profiles(directory)
    if name not in table:
        fail("profile", f"no profile {name!r} in {directory} (known: {', '.join(table) or 'none'})")
    pipeline = load_pipeline(table[name])  # a broken profile never replaces params.yaml
    if pipeline.profile != name:
        fail(f"{table[name]}: profile", f"says {pipeline.profile!r}; it must equal the file name {name!r}")
    write_text(target, table[name].read_text())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vld.pipeline.profile", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="profile name (conf/profiles/NAME.yaml)")
    parser.add_argument("--list", action="store_true", help="list the profiles")
    parser.add_argument("--dir", default=str(PROFILES_DIR), help="profiles directory")
    parser.add_argument("--out", default="params.yaml", help="file to write (default: params.yaml)")
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    if args.list or not args.name:
        from vld.pipeline.params import load_yaml

        for name, path in profiles(directory).items():
            description = load_yaml(path).get("description", "")
            print(f"{name:10s} {' '.join(str(description).split())}")
        return 0
    select(args.name, Path(args.out), directory)
    print(f"params.yaml <- {directory / (args.name + '.yaml')}; now run: dvc repro")
    return 0


if __name__ == "__main__":
    run_cli(main)
