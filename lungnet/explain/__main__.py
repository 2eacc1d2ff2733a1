"""``python -m lungnet.explain``: the Hydra app `lungnet.cli.explain` (the work is in `lungnet.explain.command`)."""

if __name__ == "__main__":
    from lungnet.cli import explain

    explain()
