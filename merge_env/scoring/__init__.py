"""Scoring models on tasks: the teacher-forced evaluator, its cache, the Ray back-end, the task sets."""
