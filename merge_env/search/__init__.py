"""The search world: recipes, assembling them, the problem that scores them, budget, front, archive."""
