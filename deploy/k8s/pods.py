#!/usr/bin/env python3
"""Runs the StatefulSet's three pods as local processes, with the
environment the manifest gives them, and checks they form a cluster (run
by deploy/check after check.py; needs root, unshare and setpriv).

What each process gets, as in a pod:
- the environment of the container, `$(VAR)`s expanded for its pod name
  and the namespace `default`, and nothing else;
- the host name raft-N (its own UTS namespace): --id-from-hostname;
- an /etc/hosts (its own mount namespace) that maps the headless Service's
  names raft-N.raft-peer.default.svc.cluster.local to the pod's address;
- user and group 10001; the Secrets' files as Kubernetes writes them with
  fsGroup 10001: root's, mode 0440, group 10001; a data directory of mode
  2775, group 10001, like a volume after fsGroup;
- certificates made by the command deploy/README.md gives for the
  raft-certs Secret (raft-node certs with the names it lists).

What differs, since the three share one network namespace: each listens on
its own loopback address (127.0.77.N+1) instead of 0.0.0.0, on two free
ports instead of 7000 and 8080, and the files' directories (/certs, /data,
/run/raft/credentials) are under a temporary directory.

Checks: all three ready (/readyz over HTTPS, as the readiness probe) with
the ids 1, 2, 3 from their host names and one leader; `ctl` with the
environment the manifest sets for `kubectl exec` (RAFT_CACERT,
RAFT_TOKEN_FILE) writes through every pod (a follower forwards over HTTPS,
checking the leader's certificate for its pod name) and reads back; on
SIGTERM (what the kubelet sends after the preStop pause) the leader hands
leadership over, and every node exits 0 within the grace period.

Usage: pods.py RAFT_NODE_BINARY
"""

import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402  (the manifests, built as kubectl kustomize would)

UID = GID = 10001
READY_TIMEOUT_S = 60


def free_ports(ips):
    """Two ports free for TCP and UDP on every address."""
    for _ in range(200):
        ports = random.sample(range(20000, 40000), 2)
        socks = []
        try:
            for ip in ips:
                for port in ports:
                    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                        s = socket.socket(socket.AF_INET, kind)
                        socks.append(s)
                        s.bind((ip, port))
            return ports
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit("pods.py: found no free ports")


def as_secret(path, mode=0o440):
    os.chown(path, 0, GID)
    os.chmod(path, mode)


def in_pod(hosts, pod, argv):
    """argv as user 10001 with host name `pod` and the private /etc/hosts."""
    return [
        "unshare", "--uts", "--mount", "--", "sh", "-c",
        'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"',
        "sh", pod, hosts,
        "setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--no-new-privs",
        *argv,
    ]


def probe(ip, port, path):
    """The kubelet's HTTPS probe: any certificate, status 200-399 is success."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://{ip}:{port}{path}", context=ctx, timeout=3) as r:
            return r.status
    except Exception as e:  # noqa: BLE001  (any failure is a failed probe)
        return getattr(e, "code", None) or str(e)


def readme():
    with open(os.path.join(check.HERE, "..", "README.md")) as f:
        return f.read()


def readme_certs_blocks():
    """The shell blocks of deploy/README.md's Kubernetes section that run
    `raft-node certs`: the first cluster's certificates, then those of the
    nodes added."""
    text = readme()
    start = text.index("\n## Kubernetes\n")
    end = text.find("\n## ", start + 1)
    blocks = text[start : end if end >= 0 else len(text)].split("```")
    found = [b.split("\n", 1)[1] for b in blocks[1::2] if "raft-node certs" in b]
    if len(found) != 2:
        raise SystemExit(f"deploy/README.md: {len(found)} blocks of the Kubernetes section run raft-node certs, not 2")
    return found


class Pods:
    def __init__(self, binary, tmp):
        docs = check.build(check.HERE)
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        (added,) = check.build(os.path.join(check.HERE, "added"))
        self.sts = sts
        self.container = sts["spec"]["template"]["spec"]["containers"][0]
        self.replicas = sts["spec"]["replicas"]
        # Pod i: raft-0..raft-2, then deploy/k8s/added's raft-added-3, -4.
        self.pods = [(f"raft-{i}", self.container) for i in range(self.replicas)]
        start = added["spec"]["ordinals"]["start"]
        self.pods += [
            (f"raft-added-{start + i}", added["spec"]["template"]["spec"]["containers"][0])
            for i in range(added["spec"]["replicas"])
        ]
        self.binary = os.path.realpath(binary)
        self.tmp = tmp
        self.max = len(self.pods)
        self.ips = [f"127.0.77.{i + 1}" for i in range(self.max)]
        self.peer_port, self.client_port = free_ports(self.ips)
        self.procs = {}
        self.hosts = os.path.join(tmp, "hosts")
        domain = f"{sts['spec']['serviceName']}.{check.NAMESPACE}.svc.{check.CLUSTER_DOMAIN}"
        self.names = [f"{pod}.{domain}" for pod, _ in self.pods]
        with open(self.hosts, "w") as f:
            f.write("127.0.0.1 localhost\n")
            for ip, name in zip(self.ips, self.names):
                f.write(f"{ip} {name}\n")
            # The client Service, here raft-0's address.
            f.write(f"{self.ips[0]} raft-client.{check.NAMESPACE}.svc.{check.CLUSTER_DOMAIN}\n")
        os.chmod(self.hosts, 0o644)

    def secrets(self):
        """The two Secrets as deploy/README.md makes them, as files in a pod."""
        work = os.path.join(self.tmp, "readme")
        os.mkdir(work)
        script = f'raft-node() {{ "{self.binary}" "$@"; }}\n' + "\n".join(readme_certs_blocks())
        out = subprocess.run(["bash", "-euc", script], cwd=work, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"deploy/README.md's raft-node certs command: {out.stderr.strip()}")
        made = os.path.join(work, "certs")
        certs = os.path.join(self.tmp, "certs")
        os.mkdir(certs)
        for f in os.listdir(made):
            if f != "ca.key":  # never in the Secret
                shutil.copy(os.path.join(made, f), certs)
                as_secret(os.path.join(certs, f))
        creds = os.path.join(self.tmp, "credentials")
        os.mkdir(creds)
        for name in ("auth-token", "admin-token"):
            with open(os.path.join(creds, name), "w") as f:
                f.write(os.urandom(32).hex() + "\n")
            as_secret(os.path.join(creds, name))

    def env(self, i):
        """Pod i's environment, with the local differences."""
        name, container = self.pods[i]
        return self.local(check.container_env(container, name), i, name)

    def local(self, env, i, name):
        """A pod's environment at pod i's address, with the local differences."""
        out = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for k, v in env.items():
            v = v.replace(":7000", f":{self.peer_port}").replace(":8080", f":{self.client_port}")
            v = v.replace("0.0.0.0:", f"{self.ips[i]}:")
            v = v.replace("/run/raft/credentials", os.path.join(self.tmp, "credentials"))
            v = v.replace("/certs/", os.path.join(self.tmp, "certs") + "/")
            if v.startswith("/data/"):
                v = os.path.join(self.tmp, f"data-{name}", v[len("/data/"):])
            out[k] = v
        # 127.0.0.1 is not this pod's here (the three share the loopback):
        # ctl goes to the pod's own name, which its certificate carries too.
        out["RAFT_ENDPOINT"] = f"https://{self.names[i]}:{self.client_port}"
        return out

    def start(self, i, pod=None, container=None):
        """Pod i (or, at its address, `pod` with `container`'s settings)."""
        name = pod or self.pods[i][0]
        container = container or self.pods[i][1]
        data = os.path.join(self.tmp, f"data-{name}")
        if not os.path.exists(data):
            os.mkdir(data)
            as_secret(data, 0o2775)
        log = open(os.path.join(self.tmp, f"{name}.log"), "a")
        argv = in_pod(self.hosts, name, [self.binary, *container["args"]])
        env = self.local(check.container_env(container, name), i, name)
        self.procs[i] = subprocess.Popen(argv, env=env, stdout=log, stderr=log)

    def ctl(self, i, *args, may_fail=False):
        argv = in_pod(self.hosts, self.pods[i][0], [self.binary, "ctl", *args])
        out = subprocess.run(argv, env=self.env(i), capture_output=True, text=True, timeout=30)
        if may_fail:
            return out
        if out.returncode != 0:
            raise SystemExit(f"ctl {' '.join(args)} in {self.pods[i][0]}: {out.stderr.strip()}")
        return out.stdout

    def wait_ready(self, pods):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            for i, p in self.procs.items():
                if p.poll() is not None:
                    raise SystemExit(f"{self.pods[i][0]} exited with status {p.returncode}")
            codes = [probe(self.ips[i], self.client_port, "/readyz") for i in pods]
            if all(c == 200 for c in codes):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"not all ready after {READY_TIMEOUT_S} s: /readyz {codes}")
            time.sleep(0.5)

    def stop(self, order):
        grace = self.sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        pause = self.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        for i in order:
            p = self.procs.pop(i)
            p.send_signal(signal.SIGTERM)
            try:
                code = p.wait(timeout=grace - pause)
            except subprocess.TimeoutExpired:
                raise SystemExit(f"{self.pods[i][0]} still running {grace - pause} s after SIGTERM")
            check.check(code == 0, f"{self.pods[i][0]} exited {code} on SIGTERM")

    def kill_all(self):
        for p in list(self.procs.values()):
            if p.poll() is None:
                p.kill()
                p.wait()

    def logs(self):
        for log in sorted(f for f in os.listdir(self.tmp) if f.endswith(".log")):
            with open(os.path.join(self.tmp, log)) as f:
                lines = f.readlines()
            print(f"--- {log} (last 15 lines)")
            print("".join(lines[-15:]), end="")


def first_cluster(pods):
    for i in range(pods.replicas):
        pods.start(i)
    t0 = time.monotonic()
    pods.wait_ready(range(pods.replicas))
    print(f"  {pods.replicas} pods ready (/readyz over HTTPS) in {time.monotonic() - t0:.1f} s")
    statuses = [json.loads(pods.ctl(i, "-w", "json", "status")) for i in range(pods.replicas)]
    ids = [s["id"] for s in statuses]
    check.check(ids == list(range(1, pods.replicas + 1)), f"ids from host names: {ids}")
    leaders = {s["leader"] for s in statuses}
    check.check(len(leaders) == 1 and None not in leaders, f"one leader: {leaders}")
    writes_through_every_pod(pods, range(pods.replicas))
    print(f"  ids 1..{pods.replicas} from the host names, leader {statuses[0]['leader']}; ctl "
          f"with the manifest's RAFT_CACERT and RAFT_TOKEN_FILE wrote through every pod "
          f"and read back")


def writes_through_every_pod(pods, which):
    for i in which:
        pods.ctl(i, "put", f"k8s-check-{i}", f"written through {pods.pods[i][0]}")
    for i in which:
        for j in which:
            got = pods.ctl(i, "get", f"k8s-check-{j}")
            check.check(got == f"written through {pods.pods[j][0]}",
                        f"{pods.pods[i][0]} reads k8s-check-{j}: {got!r}")


def leader_of(pods, i):
    return json.loads(pods.ctl(i, "-w", "json", "status"))["leader"]


def scale(pods):
    """deploy/README.md's "Scaling", from 3 voters to 5."""
    # A fourth pod of the StatefulSet raft is not in the initial cluster.
    new = list(range(pods.replicas, pods.max))
    pods.start(new[0], pod=f"raft-{pods.replicas}", container=pods.container)
    code = pods.procs.pop(new[0]).wait(timeout=30)
    with open(os.path.join(pods.tmp, f"raft-{pods.replicas}.log")) as f:
        said = "--initial-cluster does not list this node" in f.read()
    check.check(code != 0 and said, f"raft-{pods.replicas} refuses to start")
    # deploy/k8s/added: one pod at a time (OrderedReady), each once the
    # previous one is ready; they join as learners, then `ctl promote`.
    for i in new:
        pods.start(i)
        pods.wait_ready([i])
    for i in new:
        deadline = time.monotonic() + 30
        while True:
            out = pods.ctl(0, "promote", str(i + 1), may_fail=True)
            if out.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"ctl promote {i + 1}: {out.stderr.strip()}")
            time.sleep(0.5)
    voters = json.loads(pods.ctl(0, "-w", "json", "status"))["membership"]["voters"]
    check.check(sorted(voters) == list(range(1, pods.max + 1)), f"voters after scaling: {voters}")
    ids = [json.loads(pods.ctl(i, "-w", "json", "status"))["id"] for i in new]
    check.check(ids == [i + 1 for i in new], f"the added pods' ids: {ids}")
    writes_through_every_pod(pods, range(pods.max))
    names = ", ".join(pods.pods[i][0] for i in new)
    print(f"  scaling: raft-{pods.replicas} refused to start; deploy/k8s/added's {names} "
          f"joined and were promoted: voters {sorted(voters)}, a write through each")


def run(pods):
    pods.secrets()
    first_cluster(pods)
    scale(pods)
    leader = leader_of(pods, 0)
    order = [leader - 1] + [i for i in sorted(pods.procs) if i != leader - 1]
    pods.stop(order)
    name = pods.pods[leader - 1][0]
    with open(os.path.join(pods.tmp, f"{name}.log")) as f:
        handed = "handed leadership over" in f.read()
    check.check(handed, f"the leader {name} handed leadership over on SIGTERM")
    print("  SIGTERM: the leader handed leadership over; every node exited 0 within "
          "the grace period")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        sys.exit("deploy/k8s/pods.py: needs root, unshare and setpriv (util-linux)")
    tmp = tempfile.mkdtemp(prefix="raft-k8s-pods-")
    os.chmod(tmp, 0o755)
    pods = Pods(sys.argv[1], tmp)
    ok = False
    try:
        run(pods)
        ok = not check.failures
    finally:
        pods.kill_all()
        if not ok and pods.procs:
            pods.logs()
        shutil.rmtree(tmp, ignore_errors=True)
    if not ok:
        sys.exit(f"deploy/k8s pods: {len(check.failures)} check(s) failed")


if __name__ == "__main__":
    main()
