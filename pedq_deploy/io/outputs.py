"""An output folder that never shows a partial result.

Files are written into a hidden staging folder next to OUTDIR (same file system) and renamed
into OUTDIR only once every output of the run is complete. On failure the staging folder is
removed and OUTDIR is left as it was. A run killed outright (SIGKILL, power loss) cannot clean
up: its staging folder carries its process id, and the next run for the same OUTDIR removes
staging folders whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import InputError

__all__ = ["StagedOutput", "check_output_folder"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_orphans(parent: Path, name: str) -> None:
    """Staging folders of earlier runs for ``name`` whose process no longer exists."""
    prefix = f".{name}.partial-"
    for d in parent.glob(prefix + "*"):
        pid = d.name[len(prefix) :].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def check_output_folder(outdir: str | os.PathLike, overwrite: bool, option: str = "--overwrite") -> None:
    """Refuse an output folder that already holds files unless the caller replaces it whole."""
    p = Path(outdir)
    if p.exists() and not p.is_dir():
        raise InputError(f"output path exists and is not a folder: {p}")
    if p.is_dir() and not overwrite and any(p.iterdir()):
        raise InputError(f"{p} already holds files: give {option} to replace its contents, or name a new folder")


class StagedOutput:
    """Context manager: ``with StagedOutput(outdir) as st: save(st.path("qsm.nii.gz"))``.

    ``whole=False`` moves the staged files into OUTDIR next to whatever it holds (a study's
    derivatives folder, where many runs share one folder). ``whole=True`` makes the staged
    folder OUTDIR: an earlier OUTDIR is replaced entirely, so no stale file survives.
    """

    def __init__(self, outdir: str | os.PathLike, whole: bool = False):
        self.outdir = Path(outdir)
        self.whole = whole
        self._stage: Path | None = None
        self._names: list[str] = []

    def __enter__(self) -> StagedOutput:
        parent = self.outdir.resolve().parent
        if self.outdir.exists() and not self.outdir.is_dir():
            raise InputError(f"output path exists and is not a folder: {self.outdir}")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _remove_orphans(parent, self.outdir.name)
            self._stage = Path(tempfile.mkdtemp(prefix=f".{self.outdir.name}.partial-{os.getpid()}-", dir=parent))
        except OSError as exc:
            raise InputError(f"cannot create the output folder {self.outdir}: {exc.strerror}") from None
        return self

    @property
    def names(self) -> list[str]:
        """The output names requested so far."""
        return list(self._names)

    def folder(self) -> Path:
        """The staging folder, for writers that name their own files; register them with :meth:`adopt`."""
        if self._stage is None:
            raise RuntimeError("StagedOutput used outside its with-block")
        return self._stage

    def adopt(self, path: str | os.PathLike) -> None:
        """Register a file a writer put directly into :meth:`folder`."""
        self.path(Path(path).name)

    def path(self, name: str) -> Path:
        """Where to write output ``name`` (a plain file name, no folders)."""
        if self._stage is None:
            raise RuntimeError("StagedOutput used outside its with-block")
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"output name must be a plain file name: {name!r}")
        self._names.append(name)
        return self._stage / name

    def __exit__(self, exc_type, exc, tb) -> None:
        stage, self._stage = self._stage, None
        if stage is None:
            return
        try:
            if exc_type is None and self.whole:
                self._swap_in(stage)
            elif exc_type is None:
                self.outdir.mkdir(parents=True, exist_ok=True)
                for name in self._names:
                    src = stage / name
                    if src.exists():
                        os.replace(src, self.outdir / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _swap_in(self, stage: Path) -> None:
        """The staged folder becomes OUTDIR; the previous OUTDIR goes, whole."""
        for extra in set(p.name for p in stage.iterdir()) - set(self._names):  # as the merge: registered names only
            if (stage / extra).is_dir():
                shutil.rmtree(stage / extra)
            else:
                (stage / extra).unlink()
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp made it private; OUTDIR gets the user's usual permissions
        old = None
        if self.outdir.exists():
            old = stage.with_name(stage.name + "-old")
            os.replace(self.outdir, old)
        os.replace(stage, self.outdir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
