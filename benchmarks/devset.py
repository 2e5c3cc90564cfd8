"""Build or describe the development benchmark (simbench.data.devset): real photographs and line art.

    python benchmarks/devset.py build [--root DIR] [--seed 0] [--no-install]
    python benchmarks/devset.py info  [--root DIR] [--seed 0]

`build` first makes sure the inputs are there: as root it installs Debian's wallpaper packages
(plasma-workspace-wallpapers, lomiri-wallpapers*) with apt-get and AugLy with pip when they are missing,
printing each command; as another user it prints the commands to run instead. Then it builds the four
collections <root>/{tune,report}/{photo,lineart} (nothing happens when they are built already) and prints
their counts. `info` prints where the benchmark is and the same counts.

Load a collection in Python with `simbench.data.devset.DevSet(split, part, root=None).load()`.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import timed  # noqa: E402
from simbench.data import devset as ds  # noqa: E402


def missing_packages() -> list[str]:
    """The Debian packages of ds.PACKAGES that are not installed (all of them when dpkg is absent)."""
    if not shutil.which("dpkg-query"):
        return list(ds.PACKAGES)
    missing = []
    for package in ds.PACKAGES:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "install ok installed" not in result.stdout:
            missing.append(package)
    return missing


def run(command: list[str]) -> None:
    """Print a command, then run it (a failure stops the build)."""
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"})


def install_inputs(allowed: bool) -> None:
    """apt-get install the wallpaper packages (and libmagic1, AugLy's file-type library) and pip install
    AugLy when missing; without root (or with allowed=False) only say what to run."""
    packages = missing_packages()
    need_augly = importlib.util.find_spec("augly") is None
    if need_augly and not _has_libmagic():
        packages.append("libmagic1")
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if packages:
        if allowed and is_root and shutil.which("apt-get"):
            run(["apt-get", "update"])
            run(["apt-get", "install", "-y", "--no-install-recommends", *packages])
        else:
            print(f"missing Debian packages: {' '.join(packages)}; run as root: "
                  f"apt-get install -y {' '.join(packages)}")
    else:
        print(f"Debian packages present: {', '.join(ds.PACKAGES)}", flush=True)
    if need_augly:
        if allowed:
            run([sys.executable, "-m", "pip", "install", "augly"])
        else:
            print(f"AugLy missing; run: {sys.executable} -m pip install augly")
    else:
        print("AugLy present")


def _has_libmagic() -> bool:
    import ctypes.util

    return ctypes.util.find_library("magic") is not None


def print_counts(root: Path) -> None:
    """Counts per collection, then copies per edit family per collection."""
    collections = [(split, part) for split in ds.SPLITS for part in ds.PARTS]
    counts = {c: ds.collection_counts(root / c[0] / c[1]) for c in collections}
    columns = ("images", "references", "copies", "distractors", "true_pairs")
    print(f"{'collection':16s}" + "".join(f"{c:>12s}" for c in columns))
    for (split, part), n in counts.items():
        print(f"{split + '/' + part:16s}" + "".join(f"{n[c]:12d}" for c in columns))
    families = sorted({f for n in counts.values() for f in n["copies_per_family"]})
    print(f"\ncopies per edit family\n{'family':16s}" + "".join(f"{s + '/' + p:>16s}" for s, p in collections))
    for family in families:
        print(f"{family:16s}" + "".join(f"{counts[c]['copies_per_family'].get(family, 0):16d}" for c in collections))
    with open(root / "sources.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r["status"] == "kept"]
    print(f"\nsources: {len(rows)} wallpapers, {len(kept)} used "
          f"(tune {sum(r['split'] == 'tune' for r in kept)}, report {sum(r['split'] == 'report' for r in kept)})")
    for r in rows:
        if r["status"] != "kept":
            print(f"  left out {r['name']}: {r['status']}, {r['note']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "info"))
    parser.add_argument("--root", help="folder of the four collections (default: in the simbench cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-install", action="store_true", help="do not apt-get / pip install anything")
    args = parser.parse_args(argv)
    devset = ds.DevSet(root=args.root, seed=args.seed)
    if args.command == "info":
        print(f"devset root: {devset.root}")
        if not devset.is_built():
            print("not built yet: python benchmarks/devset.py build")
            return 1
        print_counts(devset.root)
        return 0
    install_inputs(allowed=not args.no_install)
    if devset.is_built():
        print(f"already built: {devset.root}")
    else:
        seconds, _ = timed(devset.build, True)
        print(f"built {devset.root} in {seconds:.0f} s")
    print_counts(devset.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
