"""meshplane: an Envoy service-mesh control plane for the OCI Service Mesh API."""
