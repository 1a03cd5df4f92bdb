"""The sidecar injection webhook: the decision, the mutation, the admission server, its TLS."""
