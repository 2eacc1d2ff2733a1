"""``python -m lungnet.explain``: the Hydra app `lungnet.commands.explain.main` (the work is in
`lungnet.explain.job`)."""

if __name__ == "__main__":
    from lungnet.commands.explain import main as explain

    explain()
