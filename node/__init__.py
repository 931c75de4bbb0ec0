"""exnode daemon core: config, identity, packages, delivery, exchange log, CLI."""
