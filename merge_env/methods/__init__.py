"""Methods built on the merge world: model recycling and merging experts into mixtures (moe/)."""
