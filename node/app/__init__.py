"""Floor e: the control server, the command line and the runtime (``exnode run``)."""
