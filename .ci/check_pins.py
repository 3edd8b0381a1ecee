"""Print the installed versions of the pinned packages and fail where they differ from constraints.txt.

`make` runs it after every install and `.ci/run` before the tests: a suite that passes against other versions
than the pinned ones proves nothing about the pins.
"""

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

SHOWN = ("torch", "torchvision", "lightning", "torchmetrics", "timm", "jsonargparse", "wandb", "numpy", "pandas")


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            out[canonicalize_name(name)] = pinned.strip()
    return out


def main() -> int:
    pinned = pins(Path(__file__).resolve().parents[1] / "constraints.txt")
    installed = {}
    for name in pinned:
        try:
            installed[name] = version(name)
        except PackageNotFoundError:  # constraints may pin extras that are not installed (jupyterlab)
            pass
    print("installed: " + ", ".join(f"{name} {installed.get(name, 'missing')}" for name in SHOWN))
    # local labels (+cu130, +cpu) name the build, not the release
    wrong = sorted(f"{name} {have} (pinned {pinned[name]})" for name, have in installed.items()
                   if Version(have).public != Version(pinned[name]).public)
    missing = [name for name in ("torch", "torchvision") if name not in installed]
    if wrong or missing:
        print("error: installed versions differ from constraints.txt: " + ", ".join(wrong + missing)
              + "; run `make clean setup`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
