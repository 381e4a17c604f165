"""Model architectures: plain ``nn.Module``s with paper presets; no Lightning, no data code."""
