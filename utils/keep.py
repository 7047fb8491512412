"""Keep a run when the machine goes away (a Colab runtime does): zip its folder and download it, or copy the zip
to Google Drive; elsewhere say where it is."""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

DRIVE = "/content/drive"
DRIVE_DIR = f"{DRIVE}/MyDrive/cifar10-runs"


def zip_run(out: str | Path) -> Path:
    """``out`` as ``out.zip`` beside it: every file of the run (report.md, log.txt, metrics.json, the figures,
    the checkpoint) under the folder's name, the lock file left out."""
    out = Path(out)
    archive = out.with_name(out.name + ".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.name != ".lock":
                z.write(path, Path(out.name) / path.relative_to(out))
    return archive


def keep_run(out: str | Path, to_drive: bool = False, drive_dir: str = DRIVE_DIR) -> Path:
    """Zip the run (:func:`zip_run`); in Colab offer it as a download, or with ``to_drive`` copy it into
    ``drive_dir`` on Google Drive (mounted on first use); elsewhere print where folder and zip are. Returns
    the zip's path (the copy's, with ``to_drive``)."""
    import shutil

    archive = zip_run(out)
    if "google.colab" not in sys.modules:
        print(f"the run is in {out}/ and {archive}")
        return archive
    if to_drive:
        from google.colab import drive

        drive.mount(DRIVE)
        target = Path(drive_dir)
        target.mkdir(parents=True, exist_ok=True)
        kept = Path(shutil.copy(archive, target / archive.name))
        print(f"copied {archive} to {kept} (Google Drive)")
        return kept
    from google.colab import files

    files.download(str(archive))
    print(f"downloading {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return archive
