"""What the bench scripts share: the command line and result record, generators, CPU-time and CV helpers."""
