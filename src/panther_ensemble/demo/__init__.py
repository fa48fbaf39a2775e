"""The demo, apart from the product: MRI-like phantoms, random-weight nnU-Net ensembles, the sample cases and ResEnc
plans from nnU-Net's planner. For development and tests; the image leaves it out. Imports core and engine."""
