"""The Grand Challenge app around the engine: the input socket and its files, where the mask goes, where spec and
weights are found (/opt/ml/model), the weights manifest, the model tarball's content, and the predict run end to
end. Imports core and engine."""
