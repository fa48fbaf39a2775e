"""panther-ensemble: heterogeneous nnU-Net v2 ensembles as a Grand Challenge algorithm (PANTHER)."""

__version__ = "0.1.0"
