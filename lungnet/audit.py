"""``python -m lungnet.audit``: a doorway to `lungnet.commands.audit` (``lungnet-audit``, ``conf/audit.yaml``);
nothing imports it."""

if __name__ == "__main__":
    from lungnet.commands.audit import main

    main()
