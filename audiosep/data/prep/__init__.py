"""Offline corpus preparation: LibriMix generation and metadata recipe, LibriSpeech manifests,
the built-in synthetic demo set. Training-time datasets live in :mod:`audiosep.data`.

Submodules are imported by name (nothing is imported here, so the package stays light).
"""
