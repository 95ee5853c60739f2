"""Local stand-ins for a cluster, for the demo and the integration tests: a real etcd +
kube-apiserver, a real Prometheus, the operator as a process. They build or locate their binaries
with the scripts in a source checkout (scripts/kube-assets.sh, scripts/prometheus-assets.sh)."""
