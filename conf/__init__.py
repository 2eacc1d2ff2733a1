"""lungnet's Hydra configs. In the wheel this folder is the package ``lungnet.conf``, the console scripts' config
path ``pkg://lungnet.conf`` (Hydra reads configs from a package only when it has this file)."""
