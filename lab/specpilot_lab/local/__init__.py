"""Local stand-ins for a cluster, for the demo and the integration tests: a real etcd +
kube-apiserver, a real Prometheus, the operator as a process. Their binaries come from the
recipes shipped in assets/ (specpilot_lab.local.assets), so no source checkout is needed."""
