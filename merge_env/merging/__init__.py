"""The parameter-space merge engine, usable alone like mergekit: arch, checkpoint, methods, plan, engine."""
