"""The trained toy Wan: a procedural data set of moving shapes, the training script, and the
weights it wrote (`edit.toy_pipeline()` loads them offline)."""
