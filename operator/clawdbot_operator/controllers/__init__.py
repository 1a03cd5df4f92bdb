"""One controller per kind: kopf handlers (thin) that parse, decide with pure functions and
apply. ``modeldeployment`` reconciles ModelDeployments and their children;
``routingpolicy`` keeps the discovery state and RoutingPolicy status."""
