"""The command line (`specviz` or `python -m specviz`): one module per command, parsed in main.py."""
