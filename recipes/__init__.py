"""Tiny and paper recipes (LightningCLI YAML), shipped inside the package."""
