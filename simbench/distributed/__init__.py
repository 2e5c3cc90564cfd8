"""simbench on a Dask cluster (conf/cluster): extraction as tasks over chunks of files, matching as tasks.

    cluster.py  which cluster a run uses (none, local, slurm, gpu, or a running scheduler), started and closed
    extract.py  extraction tasks: one chunk of files -> one --index shard per stage (find) or feature rows (runner)
    match.py    distributed matching (keypoint multi-index self-join, RANSAC verification, CNN top-k)

`match_stage` is the one hook the find pipeline and the runner call to match on a cluster.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging

log = logging.getLogger("simbench")

#: The entry point match.py provides: score_pairs(client, method, features, progress=False) -> ScoredPairs,
#: equal to method.score_pairs(features) (pairs in feature rows, scores and extras).
MATCH_ENTRY = "score_pairs"


def match_stage(client, method, features, progress: bool = False, name: str = ""):
    """A method's pairs of `features` (what method.score_pairs gives) with the cluster behind `client`:
    simbench.distributed.match.score_pairs when that module provides it, else method.score_pairs here in
    the client's process (said in the log: that step then needs all its features in one process)."""
    run = None
    if importlib.util.find_spec("simbench.distributed.match") is not None:
        run = getattr(importlib.import_module("simbench.distributed.match"), MATCH_ENTRY, None)
    if run is None:
        log.warning("%s: no distributed matching yet (simbench.distributed.match.%s); matching in this process",
                    name or type(method).__name__, MATCH_ENTRY)
        return method.score_pairs(features)
    return run(client, method, features, progress=progress)
