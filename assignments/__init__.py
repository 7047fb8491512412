"""Assignment recipes (S7, S8, S9, S10), the run pipeline and the command ``python -m assignments S7|...|S10``."""
