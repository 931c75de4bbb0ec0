"""Floor f: demo, local-cluster and embedded-broker tooling."""
