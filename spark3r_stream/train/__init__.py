"""Training the embedded default model (`vggt-tiny`) on rendered scenes: data, losses, resumable loop."""
