"""Floor a: the errors and the configuration model that every other floor may use."""
