"""MRD (ISMRMRD streaming) I/O and the ``pedq-serve`` server; needs the ``mrd`` extra (ismrmrd)."""
