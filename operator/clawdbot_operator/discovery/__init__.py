"""The discovery stream: each sidecar's policy and endpoints down, load reports up."""
