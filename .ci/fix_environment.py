"""Environment checks and fixes run by `make install` (`.ci/fix_environment.py --fix`).

- partitura tries to download a soundfont at import time when pyfluidsynth is importable, and fails
  offline; it looks for `partitura/assets/MuseScore_General.sf3` first, so we link the system one there.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

SYSTEM_SOUNDFONTS = {
    "fluidr3": "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "musescore": "/usr/share/sounds/sf3/MuseScore_General.sf3",
}


def partitura_soundfont_target() -> Path | None:
    spec = importlib.util.find_spec("partitura")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "MuseScore_General.sf3"


def fix_partitura_soundfont() -> str:
    target = partitura_soundfont_target()
    if target is None:
        return "partitura not installed"
    if target.exists():
        return f"partitura soundfont present at {target}"
    source = Path(SYSTEM_SOUNDFONTS["musescore"])
    if not source.exists():
        return f"{source} missing: install musescore-general-soundfont (partitura would try to download one)"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)
    return f"linked {source} -> {target}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fix", action="store_true", help="apply the fixes")
    args = parser.parse_args(argv)
    if args.fix:
        print(fix_partitura_soundfont())
    return 0


if __name__ == "__main__":
    sys.exit(main())
