"""``python -m lungnet.app``: a doorway to `lungnet.commands.app` (``lungnet-app``, ``conf/app.yaml``); nothing
imports it."""

if __name__ == "__main__":
    from lungnet.commands.app import main

    main()
