"""Face-recognition training and evaluation on facesynth datasets: backbones, heads, data, training."""
