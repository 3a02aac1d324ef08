"""``python -m backoffice.cli``: the same as the ``signalhub`` command."""

from backoffice.cli.commands import main

main()
