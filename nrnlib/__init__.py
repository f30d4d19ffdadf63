"""nrnlib: task-specific neurons and layer-by-layer CKA on TransformerLens 4."""
