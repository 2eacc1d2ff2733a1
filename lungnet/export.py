"""``python -m lungnet.export``: a doorway to `lungnet.commands.export` (``lungnet-export``, ``conf/export.yaml``);
nothing imports it."""

if __name__ == "__main__":
    from lungnet.commands.export import main

    main()
