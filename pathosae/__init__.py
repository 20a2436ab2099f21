"""pathosae: find and remove confounders in pathology foundation-model embeddings."""

__version__ = "0.1.0"
