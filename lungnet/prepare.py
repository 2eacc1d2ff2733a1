"""``python -m lungnet.prepare``: a doorway to `lungnet.commands.prepare` (``lungnet-prepare``,
``conf/prepare.yaml``); nothing imports it."""

if __name__ == "__main__":
    from lungnet.commands.prepare import main

    main()
