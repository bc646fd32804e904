"""``python -m fnbundle.cli``: the same entry point as the ``fnbundle`` script."""

from fnbundle.cli import main

main()
