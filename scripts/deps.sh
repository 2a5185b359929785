# Sourced by the scripts in this directory: installs the system packages the
# build and the tests need when they are missing (Debian/Ubuntu).
need_apt=()
# RocksDB's bindings (raft-log) need libclang.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  need_apt+=(libclang-dev)
fi
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
# raft-node's Prometheus scrape test runs its own prometheus on a free port.
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# raft-chaos partitions its node namespaces with nftables and uses `ip` (iproute2).
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# deploy/check verifies the systemd unit offline; the DNS-name tests give
# nodes a private /etc/hosts with unshare (util-linux).
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
# scripts/build-static checks its binary with `file`; deploy/test reads
# answers with jq and curl.
command -v file >/dev/null 2>&1 || need_apt+=(file)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# raft-node's etcd API test uses the etcd-client crate, whose build script
# runs protoc (raft-node itself compiles its .proto files with protox).
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# raft-node's etcdctl test drives Debian's etcdctl 3.4 against a cluster.
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# deploy/check validates the Kubernetes manifests offline against the
# schemas kubernetes-validate ships (pinned: the schemas it has, up to
# Kubernetes 1.34, come with the version).
KUBERNETES_VALIDATE_VERSION=1.34.1
if ! python3 -c "import sys, kubernetes_validate.version as v; sys.exit(v.__version__ != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
  echo "==> installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
    echo "deps.sh: pip could not install kubernetes-validate; deploy/check will fail" >&2
fi
# No CC/CXX override here: RocksDB's build script reruns when they change,
# so the scripts and plain `cargo` commands must see the same environment
# to share one RocksDB build.
