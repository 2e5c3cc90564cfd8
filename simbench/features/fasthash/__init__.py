"""Batched kernels for the perceptual hashes: the fast path behind simbench.features.hashes.

ImageHash (Johannes Buchner, https://github.com/JohannesBuchner/imagehash) hashes one PIL image at a time:
full JPEG decode, LANCZOS resize from full size, then a small transform. Here the same hashes are computed
in three cheap stages:

1. decode small: JPEG draft decoding lets libjpeg scale by 1/2, 1/4 or 1/8 while decoding (at 1/8 only the
   DC coefficient of each 8x8 block is inverse-transformed), keeping at least 8 * hash_size pixels a side;
2. resize the small image to the hash's working size (PIL LANCZOS, as ImageHash, but from the small image);
3. transform the whole batch at once: the DCT low-frequency block and the wavelet low band are matrix
   products (D8 @ X @ D8.T), the thresholds are vectorised over the batch.

With `compat=True` every stage is ImageHash's own (full decode, convert("L"), LANCZOS from full size,
scipy.fftpack.dct and pywt over the batch axis, the same numpy reductions), so the codes equal ImageHash's
bit for bit. Batches are spread over threads by `map_batches`.

Every kernel returns bits as bool (B, nbits) in ImageHash's `hash.flatten()` order.

Modules: kernels (one function per algorithm), transforms (DCT and wavelet matrices), batch (decode,
resize, hash and pack one batch; the ImageHash reference), segments (the crop-resistant hash), threads
(batches over threads).
"""
from simbench.features.fasthash.batch import (FAST_ALGORITHMS, BatchResult, HashSpec, hash_batch, image_bits,
                                              reference_batch, reference_function)
from simbench.features.fasthash.kernels import (average_hash_bits, colorhash_bits, dhash_bits, dhash_vertical_bits,
                                                phash_bits, phash_simple_bits, whash_bits)
from simbench.features.fasthash.segments import (CropResistantSpec, Segments, SegmentHashes, crop_resistant_batch,
                                                 crop_resistant_hash, find_segments, reference_crop_resistant)
from simbench.features.fasthash.threads import available_cores, iter_batches, map_batches, prepare, split_batches
from simbench.features.fasthash.transforms import dct_matrix, natural_scale, wavelet_lowband_matrix, whash_low_size

__all__ = ["FAST_ALGORITHMS", "BatchResult", "HashSpec", "hash_batch", "image_bits", "reference_batch",
           "reference_function",
           "average_hash_bits", "colorhash_bits", "dhash_bits", "dhash_vertical_bits", "phash_bits",
           "phash_simple_bits", "whash_bits", "CropResistantSpec", "Segments", "SegmentHashes",
           "crop_resistant_batch", "crop_resistant_hash", "find_segments", "reference_crop_resistant",
           "available_cores", "iter_batches", "map_batches", "prepare", "split_batches", "dct_matrix",
           "natural_scale", "wavelet_lowband_matrix", "whash_low_size"]
