"""Collect the images to compare from folders (recursive), image files and PDF files, with provenance.

Steps:
1. `list_sources`: the image and PDF files under the given paths (folders walked recursively by
   simbench.data.folder.list_images); everything else is listed as skipped with a reason;
2. `FeatureStore.content_hash`: each file's SHA-256, the key of its records in the index;
3. `read_sources`: for each file not already in the index, its images: an image file is decoded once
   (unreadable ones are skipped with the decoder's reason) and thumbnailed; a PDF gives one image per
   placement, rendered into the work folder by simbench.find.pdf. Files are read by a pool of processes;
4. `to_items`: the records of every file, new or from the index, as one list of Items in input order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from simbench.data.folder import (IMAGE_EXTENSIONS, NOT_UTF8, UNREADABLE, is_utf8, list_images,
                                  odd_path_reason, printable_path)
from simbench.data.images import UnreadableImage, open_image
from simbench.find.items import Item, thumbnail_jpeg
from simbench.find.pdf import PagesResult, PdfOptions, extract_pages, finish_skipped, page_count
from simbench.processes import process_map
from simbench.threads import available_cores
from simbench.types import Skipped

PDF_EXTENSION = ".pdf"
#: What a folder walk picks up: images and PDFs.
EXTENSIONS = frozenset({"." + e for e in IMAGE_EXTENSIONS} | {PDF_EXTENSION})
#: Image files are read in chunks of this many per task, PDFs in ranges of this many pages per task.
IMAGES_PER_TASK = 32
PAGES_PER_TASK = 16
#: Below this many tasks a process pool costs more (interpreter start-up) than it saves.
MIN_TASKS_FOR_POOL = 4


@dataclass
class SourceRecord:
    """What one source file gave, independent of where the file lies (what the index keeps).

    images: one dict per image: id (unique in the file), suffix (appended to the file's path for
        display: "" or "#page=3&image=2"), page, bbox, digest, thumb.
    skipped: (suffix, reason) of what could not be used.
    files: id -> the file features are extracted from (this run only; not meaningful in the index).
    """

    kind: str
    images: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def for_index(self) -> "SourceRecord":
        return SourceRecord(self.kind, self.images, self.skipped, {})


# ---------------------------------------------------------------------------------------------------
# 1. Listing


def list_sources(inputs: Sequence[str | Path], progress: bool = False) -> tuple[list[Path], list[Skipped]]:
    """Image and PDF files under the inputs (folders recursively), each file once, in input order."""
    files, skipped, seen = [], [], set()
    for given in inputs:
        path = Path(given).expanduser()
        found = []
        if not is_utf8(str(path)):
            skipped.append(Skipped(printable_path(path), NOT_UTF8))
        elif path.is_dir():
            found, lost = list_images(path, EXTENSIONS, progress)
            skipped += lost
        elif path.is_file():
            found = [path] if path.suffix.lower() in EXTENSIONS else []
            if not found:
                skipped.append(Skipped(str(path), "not an image or PDF (by its extension)"))
            elif not os.access(path, os.R_OK):
                found = []
                skipped.append(Skipped(str(path), UNREADABLE))
        else:  # missing, a symlink loop, a dangling link, a FIFO...: said without opening it
            skipped.append(Skipped(str(path), odd_path_reason(path)))
        for f in found:
            real = os.path.realpath(f)
            if real not in seen:  # the same file given twice (or linked) is compared once
                seen.add(real)
                files.append(f)
    return files, skipped


def is_pdf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == PDF_EXTENSION


# ---------------------------------------------------------------------------------------------------
# 3. Reading files into records


def read_sources(files: Sequence[Path], digests: Sequence[str], work_dir: Path, options: PdfOptions,
                 workers: int = 0, progress: bool = False) -> list[SourceRecord]:
    """One SourceRecord per file, in order; PDF renderings go to work_dir/<position of the file>/."""
    records: list = [None] * len(files)
    pdf_parts: dict[int, list] = {}
    tasks = _tasks(files, digests, work_dir, options, records, pdf_parts)
    n_workers = min(workers if workers > 0 else available_cores(), len(tasks))
    use_pool = n_workers > 1 and len(tasks) >= MIN_TASKS_FOR_POOL
    bar = tqdm(total=len(tasks), desc="reading files", unit="task", disable=not progress or None)
    results = process_map(_read_task, tasks, n_workers) if use_pool else map(_read_task, tasks)
    try:
        for task, result in zip(tasks, results):
            if task[0] == "pdf":
                pdf_parts[task[1][0][0]][task[4]] = result
            else:
                for k, record in result:
                    records[k] = record
            bar.update()
    finally:
        bar.close()
    for k, parts in pdf_parts.items():
        records[k] = pdf_record(str(files[k]), parts, options)
    return records


def _tasks(files, digests, work_dir: Path, options: PdfOptions, records: list, pdf_parts: dict) -> list[tuple]:
    """Units of work: (kind, [(position, path, digest)], work_dir, options, part).

    A PDF becomes one task per PAGES_PER_TASK pages (so one long yearbook keeps every core busy); one that
    cannot be opened gets its record at once. Image files go in chunks of IMAGES_PER_TASK.
    """
    tasks, images = [], []
    for k, (path, digest) in enumerate(zip(files, digests)):
        if not is_pdf(path):
            images.append((k, str(path), digest))
            continue
        n_pages, reason = page_count(path)
        if reason:
            records[k] = SourceRecord("pdf", skipped=[("", reason)])
            continue
        starts = range(0, n_pages, PAGES_PER_TASK)
        pdf_parts[k] = [None] * len(starts)
        for part, start in enumerate(starts):
            # One folder per file (not per content: two copies of a PDF are read side by side).
            tasks.append(("pdf", [(k, str(path), digest)], str(work_dir / f"{k:06d}"), options, part,
                          start, start + PAGES_PER_TASK))
    for s in range(0, len(images), IMAGES_PER_TASK):
        tasks.append(("image", images[s:s + IMAGES_PER_TASK], None, options, 0))
    return tasks


def _read_task(task):
    """Worker entry point: a PagesResult for a PDF page range, [(position, record)] for image files."""
    kind, entries, work_dir, options = task[:4]
    if kind == "pdf":
        _, path, _ = entries[0]
        start, stop = task[5], task[6]
        return extract_pages(path, work_dir, options, start, stop)
    return [(k, read_image(path, digest, options)) for k, path, digest in entries]


def read_image(path: str, digest: str, options: PdfOptions) -> SourceRecord:
    """An image file: decoded once to check it and make its thumbnail (JPEG drafts keep this cheap)."""
    side = options.thumb_side
    try:
        image = open_image(path, draft=(2 * side, 2 * side))
    except UnreadableImage as exc:
        return SourceRecord("image", skipped=[("", str(exc))])
    record = {"id": "0", "suffix": "", "page": None, "bbox": None, "digest": "file:" + digest,
              "thumb": thumbnail_jpeg(image, side)}
    return SourceRecord("image", images=[record], files={"0": path})


def pdf_record(path: str, parts: list[PagesResult], options: PdfOptions) -> SourceRecord:
    """A PDF's record from its page ranges: one image per visible, large-enough placement."""
    record = SourceRecord("pdf")
    for part in parts:
        for p in part.placements:
            pid = f"{p.page}-{p.number}"
            record.images.append({"id": pid, "suffix": f"#page={p.page}&image={p.number}", "page": p.page,
                                  "bbox": p.bbox, "digest": p.digest, "thumb": p.thumb})
            record.files[pid] = p.image_path
    record.skipped = [(_suffix(s.path, path), s.reason) for s in finish_skipped(path, parts, options)]
    return record


def _suffix(display: str, path: str) -> str:
    return display[len(path):] if display.startswith(path) else display


# ---------------------------------------------------------------------------------------------------
# 4. Records -> Items


def to_items(files: Sequence[Path], digests: Sequence[str],
             records: Sequence[SourceRecord]) -> tuple[list[Item], list[Skipped]]:
    """Items and skipped entries of every file, displayed under the file's current path."""
    items, skipped = [], []
    for path, digest, record in zip(files, digests, records):
        source = str(path)
        for image in record.images:
            items.append(Item(path=record.files.get(image["id"]), display=source + image["suffix"],
                              source=source, page=image["page"], bbox=image["bbox"], digest=image["digest"],
                              thumb=image["thumb"], key=f"{digest}:{image['id']}"))
        skipped += [Skipped(source + suffix, reason) for suffix, reason in record.skipped]
    return items, skipped
