"""The model's source, copied from the repository it was trained in."""
