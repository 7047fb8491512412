"""Keep a run when the machine goes away (a Colab runtime does): zip its folder and download it, or copy the zip
to Google Drive; elsewhere say where it is."""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from .checkpoint import CHECKPOINT

DRIVE = "/content/drive"
DRIVE_DIR = f"{DRIVE}/MyDrive/cifar10-runs"


def zip_run(out: str | Path, checkpoint: bool = True) -> Path:
    """``out`` as ``out.zip`` beside it (``out-2.zip``, ``out-3.zip`` ... where that exists: an earlier zip is
    never replaced): every file of the run (report.md, log.txt, metrics.json, the figures, TensorBoard's files and,
    with ``checkpoint``, checkpoint.pt) under the folder's name, the lock file left out. A path that is not a
    folder is a ValueError naming it."""
    out = Path(out).resolve()
    if not out.is_dir():
        raise ValueError(f"keep_run: {out} is not a run folder ({'a file' if out.exists() else 'no such folder'})")
    archive, n = out.with_name(out.name + ".zip"), 1
    while archive.exists():
        n += 1
        archive = out.with_name(f"{out.name}-{n}.zip")
    partial = archive.with_name(archive.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.name != ".lock" and (checkpoint or path.name != CHECKPOINT):
                z.write(path, Path(out.name) / path.relative_to(out))
    partial.rename(archive)
    return archive


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory where it lies under it (as the run's ``out`` was given)."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def keep_run(out: str | Path, to_drive: bool = False, drive_dir: str = DRIVE_DIR, what: str = "the run",
             checkpoint: bool | None = None) -> Path:
    """Zip the run (:func:`zip_run`); in Colab offer it as a download, or with ``to_drive`` copy it into
    ``drive_dir`` on Google Drive (mounted on first use; if that fails, the local zip is named); elsewhere print
    where folder and zip are. The checkpoint goes into the zip with ``checkpoint=True`` and by default only to
    Drive (a browser download of a ResNet's 89 MB is slow; the folder keeps it). Returns the zip's path (the
    copy's, with ``to_drive``)."""
    import shutil

    checkpoint = to_drive if checkpoint is None else checkpoint
    archive = zip_run(out, checkpoint)
    left_out = Path(out) / CHECKPOINT
    if not checkpoint and left_out.is_file():
        print(f"{CHECKPOINT} ({left_out.stat().st_size / 1e6:.1f} MB) left out of the zip: keep(checkpoint=True) adds it")
    if "google.colab" not in sys.modules:
        ignored = " (to_drive needs Colab's Google Drive: ignored here)" if to_drive else ""
        print(f"{what} is in {_shown(archive.with_suffix(''))}/ and {_shown(archive)}{ignored}")
        return archive
    if to_drive:
        from google.colab import drive

        try:
            drive.mount(DRIVE)
            target = Path(drive_dir)
            target.mkdir(parents=True, exist_ok=True)
            kept, n = target / archive.name, 1
            while kept.exists():  # a zip kept earlier stays
                n += 1
                kept = target / f"{archive.stem}-{n}.zip"
            kept = Path(shutil.copy(archive, kept))
        except Exception as e:  # noqa: BLE001  (Drive refused or is full: the local zip is still there)
            print(f"Google Drive: {type(e).__name__}: {e}; the run is zipped in {archive} (download it from the "
                  f"file browser)")
            return archive
        print(f"copied {archive} to {kept} (Google Drive)")
        return kept
    from google.colab import files

    files.download(str(archive))
    print(f"downloading {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return archive
