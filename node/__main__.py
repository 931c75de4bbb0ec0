"""``python -m exnode.node`` is the ``exnode`` command."""

from exnode.node.cli import main

main()
