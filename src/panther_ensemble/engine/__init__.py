"""The ensemble engine: a spec and nnU-Net result folders in, a tumor mask on the input's grid out (members, their
preprocessing, sliding window and export, the probability sum, the deadline, memory and devices). Knows nothing of
Grand Challenge's sockets, files or the command line. Imports core only."""
