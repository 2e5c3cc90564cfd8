"""simbench on a Dask cluster (conf/cluster): extraction as tasks over chunks of files, matching as tasks.

    cluster.py  which cluster a run uses (none, local, slurm, gpu, or a running scheduler), started and closed
    extract.py  extraction tasks: one chunk of files -> one --index shard per stage (find) or feature rows (runner)
    match.py    distributed matching (multi-index self-join; the entry for every method)
    keypoints.py  the keypoint stage with no process holding all descriptors: chunks read by the workers from
                the index, descriptor pairs reduced per image pair where they are, RANSAC in batches
    cnn.py      the CNN stage with no process holding all embeddings: chunks read by the workers from the
                index, exact top-k in tiles merged on the workers, the fusion's scores and evidence as tasks

`match_stage` is the one hook the find pipeline and the runner call to match on a cluster.
"""
from __future__ import annotations


def match_stage(client, method, features, progress: bool = False):
    """A method's pairs of `features` (what method.score_pairs gives) with the cluster behind `client`: the
    keypoint and CNN matching as tasks (match.py), other methods' in this process."""
    from simbench.distributed.match import score_pairs

    return score_pairs(client, method, features, progress=progress)
