"""Face-recognition models trained on facesynth datasets, and their evaluation with the field's protocol."""
