"""Floor c: the exchange kernel (envelope, identity, state, transport, outbox, inbox,
receipts, relay, directory, enrolment, batching). It knows services only through the
hooks in ``exnode.plugins.hookspecs``."""
