"""``python -m exnode.node`` is the ``exnode`` command."""

from exnode.node.app.cli import main

main()
