"""Features extracted when a stage first needs them: for the pictures its proposed pairs name, not for every one.

A stage that only verifies pairs other stages propose (`own_pairs: false`) looks at a few pictures of a large
collection. With `on_demand: true` its extractor runs during matching, on the pictures of the pairs it is about to
verify, instead of on every picture while the files are read: a costly look (a finer keypoint detector) costs in
proportion to what it is asked about.

Its features are kept in the index like every stage's, under their own key (the extractor's settings and
"on_demand"), so a stage extracting everything never takes a partial record for a whole one. A file's record
holds an entry per image of the file, NOT_EXTRACTED for those no run has needed yet; a later run reads what is
there, extracts the rest it needs and stores the file's merged record (the index's newer shard wins).

Image files are read again from where they are. A PDF's placements are rendered again, page by page, into a
temporary folder (the renderings of the run's reading are gone by then): the same rendering options give the same
pixels.
"""
from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simbench.find.index import FeatureStore, join_entries, split_features
from simbench.find.items import Item
from simbench.find.pdf import PdfOptions, extract_pages
from simbench.find.sources import is_pdf

log = logging.getLogger("simbench")

#: A file's record entry for an image no run has extracted yet.
NOT_EXTRACTED = "not extracted yet (on demand)"


@dataclass
class OnDemandFeatures:
    """A stage's features, extracted and stored when `load` asks for them.

    items, digests: the run's items and their source files' content hashes (index keys); positions: each
    item's place among its file's images (pipeline.local_positions); store, section, pkey: where the features
    live; exclude: {item: reason} of items left out (blank images); options: how PDF pages are rendered."""

    extractor: object
    items: list[Item]
    digests: list[str]
    positions: list[int]
    store: FeatureStore
    section: str
    pkey: str
    exclude: dict[int, str]
    options: PdfOptions
    progress: bool = False
    extracted: int = 0  # pictures extracted by this run

    def load(self, wanted) -> tuple[object, np.ndarray, dict[int, str]]:
        """(features of the `wanted` items that have some, their item indices, {item: reason} for the others),
        as pipeline.load_features gives them for every item; what the index lacks is extracted and stored."""
        wanted = sorted(set(np.asarray(wanted, np.int64).tolist()) - set(self.exclude))
        kind = self.extractor.kind
        records = self.store.get_many(self.section, self.pkey, [self.digests[k] for k in wanted], kind)
        entries = {k: self._entry(records, k) for k in wanted}
        missing = [k for k, e in entries.items() if e is NOT_EXTRACTED]
        if missing:
            entries.update(self._extract(missing, records))
        features, rows, why = join_entries([entries[k] for k in wanted], kind)
        return features, np.asarray(wanted, np.int64)[rows], {**self.exclude, **{wanted[i]: r for i, r in why.items()}}

    def _entry(self, records: dict, k: int):
        """Item k's stored entry (a dict of arrays or a reason), or NOT_EXTRACTED."""
        record = records.get(self.digests[k])
        if not isinstance(record, list) or self.positions[k] >= len(record):
            return NOT_EXTRACTED
        entry = record[self.positions[k]]
        return NOT_EXTRACTED if entry == NOT_EXTRACTED else entry

    def _extract(self, missing: list[int], records: dict) -> dict[int, object]:
        """Extract the missing items' features, store each file's merged record, return {item: entry}."""
        out = {}
        with tempfile.TemporaryDirectory(prefix="simbench-on-demand-") as work:
            paths = self._paths(missing, Path(work))
            found = [k for k in missing if isinstance(paths[k], Path)]
            out.update((k, paths[k]) for k in missing if not isinstance(paths[k], Path))  # reasons
            if found:
                if self.progress:
                    print(f"{self.section}: extracting features of {len(found)} pictures on demand", flush=True)
                extracted = self.extractor.extract([paths[k] for k in found], progress=self.progress)
                why = {s.path: s.reason for s in extracted.skipped}
                for k, one in zip(found, split_features(extracted.features, extracted.rows, len(found))):
                    out[k] = one if one is not None else why.get(str(paths[k]), "no features")
                self.extracted += len(found)
        self._store(out, records)
        return out

    def _paths(self, missing: list[int], work: Path) -> dict[int, Path | str]:
        """Each missing item's picture file: the image file itself, or its PDF placement rendered again into
        `work`; a reason where there is none."""
        out, pages = {}, defaultdict(list)
        for k in missing:
            item = self.items[k]
            if is_pdf(item.source):
                pages[(item.source, item.page)].append(k)
            else:
                out[k] = Path(item.source) if Path(item.source).is_file() else "file gone since it was read"
        for n, ((source, page), ks) in enumerate(sorted(pages.items())):
            part = extract_pages(source, work / f"{n:06d}", self.options, page - 1, page)
            rendered = {f"{p.page}-{p.number}": Path(p.image_path) for p in part.placements}
            for k in ks:
                local_id = self.items[k].key.split(":", 1)[1]
                out[k] = rendered.get(local_id, "placement not found when its page was rendered again")
        return out

    def _store(self, new: dict[int, object], records: dict) -> None:
        """Each affected file's record, with the new entries merged in, as one index batch."""
        n_images = defaultdict(int)  # per file content (two copies of a file share its record)
        for digest, position in zip(self.digests, self.positions):
            n_images[digest] = max(n_images[digest], position + 1)
        batch = {}
        for k, entry in new.items():
            digest = self.digests[k]
            if digest not in batch:
                old = records.get(digest)
                batch[digest] = (list(old) if isinstance(old, list) and len(old) == n_images[digest]
                                 else [NOT_EXTRACTED] * n_images[digest])
            batch[digest][self.positions[k]] = entry
        self.store.put_batch(self.section, self.pkey, batch)
