"""``python -m assignments.publish USER/REPO``: point the Colab badges (README and notebooks) and every notebook's
``REPO_URL`` at the GitHub repository ``USER/REPO`` (a fork), in place of the current owner/name (``OWNER/REPO``
until published). Only those links change; the notebooks' outputs and everything else stay as they are."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}")  # with fullmatch: no trailing newline
# the two places a repository is named: a Colab badge's link and the first cell's REPO_URL
LINKS = (re.compile(r"(colab\.research\.google\.com/github/)([A-Za-z0-9-]+/[A-Za-z0-9._-]+)(/blob/)"),
         re.compile(r"(REPO_URL = \\?\"https://github\.com/)([A-Za-z0-9-]+/[A-Za-z0-9._-]+?)(\\?\")"))


def files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "assignments").glob("*.ipynb"))]


def publish(name: str, root: Path = REPO) -> dict[str, int]:
    """Rewrite the links in ``root``'s README and notebooks to ``name`` (USER/REPO); returns changes per file."""
    if not NAME.fullmatch(name) or name.split("/")[1] in (".", ".."):
        raise ValueError(f"expected USER/REPO as GitHub spells them (e.g. jane/cifar10-lab); got {name!r}")
    present = [path for path in files(root) if path.is_file()]
    if not root.is_dir() or not present:
        raise ValueError(f"--root {root} is not a checkout of this repository (no README.md or "
                         f"assignments/*.ipynb in it)")
    changed = {}
    for path in present:
        text = path.read_text()
        count = 0
        for pattern in LINKS:
            text, n = pattern.subn(lambda m: m.group(1) + name + m.group(3), text)
            count += n
        if count:
            if path.suffix == ".ipynb":
                json.loads(text)  # the rewritten notebook is still a notebook, or nothing is written
            tmp = path.with_name(f".{path.name}.publish")
            tmp.write_text(text)
            os.replace(tmp, path)
            changed[str(path.relative_to(root))] = count
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m assignments.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("name", metavar="USER/REPO", help="the GitHub repository the notebooks should clone")
    p.add_argument("--root", type=Path, default=REPO, help="the checkout to rewrite (default: this one)")
    args = p.parse_args(argv)
    try:
        changed = publish(args.name, args.root)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, n in changed.items():
        print(f"{path}: {n} link(s) now name {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
