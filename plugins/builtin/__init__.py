"""Built-in plugins, registered through the ``exnode`` entry-point group like any other."""
