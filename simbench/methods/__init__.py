"""Methods: an extractor and a matcher composed into scored image pairs."""
