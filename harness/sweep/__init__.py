"""The differential instruction sweep: the generated corpus and the batched probing of it."""
