"""Data stages: Kaldi data directories, corpus preparation, fbank extraction and training chunks."""
