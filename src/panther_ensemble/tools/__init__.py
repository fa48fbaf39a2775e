"""What a participant uses before upload: evaluation as the organizers score, the member table, previews, the
benchmark against stock nnU-Net, the ONNX export and the stock reference. Imports core, engine, app and demo."""
