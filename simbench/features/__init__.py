"""Feature extractors: images in, one feature type out (binary codes, keypoint sets or embeddings)."""
