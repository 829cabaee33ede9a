"""Command-line doors into the pipeline: they parse arguments and call one function each."""
