"""Find the submissions to grade.

Accepted inputs:

- an nbgrader course directory, or its ``submitted/`` folder:
  ``submitted/<student>/servelab/<notebook>.ipynb``;
- a folder or a ``.zip`` of notebooks as a learning-management system exports them, named
  the way nbgrader's ``zip_collect`` expects, by default
  ``<anything>_<student>_attempt_<timestamp>_<notebook>.ipynb``. File names are parsed with
  nbgrader's own :class:`~nbgrader.plugins.zipcollect.FileNameCollectorPlugin`; when a
  student submitted a notebook more than once, the latest timestamp wins.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from autograder.grade.course import ASSIGNMENT

# nbgrader's documented example pattern for zip_collect.
DEFAULT_REGEXP = r".*_(?P<student_id>\w+)_attempt_(?P<timestamp>[0-9\-]+)_(?P<file_id>\w+)"
MAX_ZIP_BYTES = 1 << 30
MAX_ZIP_FILES = 20000
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class CollectError(ValueError):
    """The input is not something submissions can be collected from; the message says why."""


@dataclass
class Submission:
    student: str
    notebooks: dict[str, Path] = field(default_factory=dict)  # notebook name -> file
    ignored: list[str] = field(default_factory=list)  # files that are not part of the assignment


def collect(path: Path, notebook_names: list[str], regexp: str = DEFAULT_REGEXP, scratch: Path | None = None) -> list[Submission]:
    """The submissions under ``path``, sorted by student id.

    ``notebook_names`` are the assignment's notebooks (file stems); other files are listed in
    ``Submission.ignored``. A zip is unpacked into ``scratch`` (a temporary folder by default).
    """
    path = Path(path)
    if not path.exists():
        raise CollectError(f"{path}: no such file or folder")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise CollectError(f"{path}: expected a folder or a .zip of submissions")
        scratch = Path(scratch or tempfile.mkdtemp(prefix="servelab-zip-"))
        path = unzip(path, scratch)
    submitted = path / "submitted" if (path / "submitted").is_dir() else path if path.name == "submitted" else None
    if submitted is not None:
        subs = _from_course(submitted, notebook_names)
    else:
        subs = _from_exports(path, notebook_names, regexp)
    if not subs:
        raise CollectError(f"{path}: found no submissions (neither submitted/<student>/{ASSIGNMENT}/ nor files matching {regexp!r})")
    return sorted(subs.values(), key=lambda s: s.student)


def _assign(sub: Submission, name: str, file: Path, notebook_names: list[str]) -> None:
    stem = _notebook_for(name, notebook_names)
    if stem is None:
        sub.ignored.append(file.name)
    else:
        sub.notebooks[stem] = file


def _notebook_for(file_id: str, notebook_names: list[str]) -> str | None:
    """``04_model_handler`` or just ``04`` name the notebook ``04_model_handler``."""
    if file_id in notebook_names:
        return file_id
    for name in notebook_names:
        if name.split("_", 1)[0] == file_id:
            return name
    return None


def _from_course(submitted: Path, notebook_names: list[str]) -> dict[str, Submission]:
    subs = {}
    for student_dir in sorted(p for p in submitted.iterdir() if p.is_dir()):
        student = student_dir.name
        if not STUDENT_ID.match(student):
            continue
        sub = Submission(student)
        folder = student_dir / ASSIGNMENT
        for file in sorted(folder.glob("*")) if folder.is_dir() else []:
            if file.suffix == ".ipynb":
                _assign(sub, file.stem, file, notebook_names)
            elif file.is_file():
                sub.ignored.append(file.name)
        subs[student] = sub
    return subs


def _from_exports(folder: Path, notebook_names: list[str], regexp: str) -> dict[str, Submission]:
    from nbgrader.plugins.zipcollect import FileNameCollectorPlugin

    plugin = FileNameCollectorPlugin(named_regexp=regexp)
    latest: dict[tuple[str, str], tuple[str, Path]] = {}
    subs: dict[str, Submission] = {}
    for file in sorted(folder.rglob("*.ipynb")):
        info = plugin.collect(file.name)
        if not info or not STUDENT_ID.match(info.get("student_id") or ""):
            continue
        student, file_id, stamp = info["student_id"], info["file_id"], info.get("timestamp") or ""
        sub = subs.setdefault(student, Submission(student))
        stem = _notebook_for(file_id, notebook_names)
        if stem is None:
            sub.ignored.append(file.name)
            continue
        if (student, stem) not in latest or stamp >= latest[(student, stem)][0]:
            latest[(student, stem)] = (stamp, file)
    for (student, stem), (_, file) in latest.items():
        subs[student].notebooks[stem] = file
    return subs


def unzip(archive: Path, dest: Path) -> Path:
    """Unpack ``archive`` into ``dest`` safely: no paths outside it, bounded size and count."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    total = 0
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_FILES:
            raise CollectError(f"{archive}: more than {MAX_ZIP_FILES} files")
        for member in members:
            if member.is_dir():
                continue
            target = (root / member.filename).resolve()
            if not str(target).startswith(str(root) + "/"):
                raise CollectError(f"{archive}: refusing an entry outside the archive folder: {member.filename!r}")
            total += member.file_size
            if total > MAX_ZIP_BYTES:
                raise CollectError(f"{archive}: unpacks to more than {MAX_ZIP_BYTES >> 20} MiB")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    return dest
