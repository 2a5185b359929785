#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests in deploy/k8s (run by
deploy/check; no cluster needed).

1. Builds what `kubectl apply -k` would apply, for deploy/k8s and for
   deploy/k8s/cert-manager: the kustomizations' resources, images and JSON
   patches (the only features they use; anything else is an error here).
   Where kubectl is installed, `kubectl kustomize` must give the same.
2. Validates every Kubernetes object against the schemas of each version in
   K8S_VERSIONS, strictly (an unknown field fails), with kubernetes-validate.
   cert-manager's objects (CRDs, not in those schemas) are checked for the
   keys cert-manager requires and for the names raft-node needs.
3. Checks what the schemas cannot: selectors, port names, every `$(VAR)`
   defined before its use (Kubernetes leaves an unknown one as it is), the
   initial cluster against the replicas and the headless Service's names,
   file paths against the volume mounts, the security settings.
4. Checks every RAFT_* variable against the `--help` of the raft-node
   binary given (`run` or `ctl`), so a misspelt or renamed setting fails.
5. Proves the validator bites: broken copies (an unknown field, a wrong
   type) must be refused by the kubernetes-validate command.

Usage: check.py RAFT_NODE_BINARY
"""

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

try:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError
except ImportError:
    sys.exit("deploy/k8s/check.py: kubernetes-validate is missing (. scripts/deps.sh installs it)")

K8S_VERSIONS = ["1.30.0", "1.34.0"]
HERE = os.path.dirname(os.path.abspath(__file__))
NAMESPACE = "default"
CLUSTER_DOMAIN = "cluster.local"
# raft-node's own leadership hand-over on SIGTERM (raft-node/src/node/mod.rs).
SIGTERM_TRANSFER_S = 3
# Variables `raft-node ctl` reads, set for `kubectl exec ... ctl`.
CTL_VARS = {"RAFT_ENDPOINT", "RAFT_CACERT", "RAFT_TOKEN_FILE", "RAFT_CERT", "RAFT_KEY"}

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def check(cond, msg):
    if not cond:
        fail(msg)
    return cond


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- kustomize, the part these kustomizations use ---------------------------


def json_pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    return parent, parts[-1]


def apply_json_patch(doc, ops, where):
    for op in ops:
        parent, key = json_pointer(doc, op["path"])
        if isinstance(parent, list):
            key = len(parent) if key == "-" else int(key)
        kind = op["op"]
        if kind == "test":
            if parent[key] != op["value"]:
                raise SystemExit(f"{where}: test {op['path']} == {op['value']!r} failed")
        elif kind == "replace":
            parent[key]  # must exist
            parent[key] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(parent, list):
                parent.insert(key, copy.deepcopy(op["value"]))
            else:
                parent[key] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[key]
        else:
            raise SystemExit(f"{where}: JSON patch op {kind!r} is not emulated")


def set_images(docs, images):
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            name = c["image"].split(":")[0]
            for img in images:
                if img["name"] == name:
                    c["image"] = f"{img.get('newName', name)}:{img['newTag']}"


def build(directory):
    """The objects `kubectl kustomize DIRECTORY` gives."""
    kfile = os.path.join(directory, "kustomization.yaml")
    k = load_docs(kfile)[0]
    unknown = set(k) - {"apiVersion", "kind", "resources", "images", "patches", "nameSuffix"}
    if unknown:
        raise SystemExit(f"{kfile}: {sorted(unknown)} not emulated by check.py")
    docs = []
    for r in k.get("resources", []):
        path = os.path.normpath(os.path.join(directory, r))
        docs += build(path) if os.path.isdir(path) else load_docs(path)
    set_images(docs, k.get("images", []))
    suffix = k.get("nameSuffix", "")
    for p in k.get("patches", []):
        target = p["target"]
        ops = load_docs(os.path.join(directory, p["path"]))[0]
        hits = [
            d
            for d in docs
            if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
        ]
        if len(hits) != 1:
            raise SystemExit(f"{kfile}: patch target {target} matches {len(hits)} objects")
        apply_json_patch(hits[0], ops, f"{kfile}: {p['path']}")
    for d in docs:
        d["metadata"]["name"] += suffix
    return docs


def listed_files(directory):
    """Every .yaml file of a kustomization directory must be used by it."""
    k = load_docs(os.path.join(directory, "kustomization.yaml"))[0]
    used = set(k.get("resources", [])) | {p["path"] for p in k.get("patches", [])}
    for f in sorted(os.listdir(directory)):
        if f.endswith(".yaml") and f != "kustomization.yaml":
            check(f in used, f"{directory}/{f} is not in its kustomization.yaml")


def key(doc):
    return (doc["kind"], doc["metadata"]["name"])


def compare_with_kubectl(directory, docs):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print(f"  (kubectl not installed: the emulated build of {directory} stands alone)")
        return
    out = subprocess.run(
        [kubectl, "kustomize", directory], capture_output=True, text=True, check=False
    )
    if not check(out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr.strip()}"):
        return
    theirs = sorted(yaml.safe_load_all(out.stdout), key=key)
    check(
        theirs == sorted(docs, key=key),
        f"kubectl kustomize {directory} differs from check.py's build",
    )
    print(f"  kubectl kustomize {os.path.relpath(directory, HERE) or '.'}: the same objects")


# --- schemas -------------------------------------------------------------------


def validate(docs, where):
    for doc in docs:
        name = "/".join(key(doc))
        if doc["apiVersion"].startswith("cert-manager.io/"):
            check_cert_manager(doc)
            print(f"  {where}: {name}: cert-manager keys (no schema)")
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except ValidationError as e:
                fail(f"{where}: {name} against Kubernetes {v}: {e.message} at {list(e.path)}")
        print(f"  {where}: {name}: valid for Kubernetes {', '.join(K8S_VERSIONS)} (strict)")


def check_cert_manager(doc):
    name = doc.get("metadata", {}).get("name")
    check(doc["apiVersion"] == "cert-manager.io/v1", f"{name}: apiVersion cert-manager.io/v1")
    spec = doc.get("spec")
    if not check(isinstance(spec, dict) and name, f"{doc['kind']}: metadata.name and spec"):
        return
    if doc["kind"] == "Issuer":
        kinds = {"selfSigned", "ca", "acme", "vault", "venafi"} & set(spec)
        check(len(kinds) == 1, f"Issuer {name}: exactly one issuer type")
        if "ca" in spec:
            check("secretName" in spec["ca"], f"Issuer {name}: ca.secretName")
    elif doc["kind"] == "Certificate":
        for k in ("secretName", "issuerRef"):
            check(k in spec, f"Certificate {name}: spec.{k}")
        check("name" in spec.get("issuerRef", {}), f"Certificate {name}: issuerRef.name")
        check(
            spec.get("commonName") or spec.get("dnsNames") or spec.get("ipAddresses"),
            f"Certificate {name}: a subject (commonName, dnsNames or ipAddresses)",
        )
        allowed = {
            "secretName", "issuerRef", "commonName", "dnsNames", "ipAddresses", "usages",
            "privateKey", "isCA", "duration", "renewBefore", "subject", "secretTemplate",
        }
        check(set(spec) <= allowed, f"Certificate {name}: unexpected {set(spec) - allowed}")
    else:
        fail(f"{doc['kind']} {name}: not a kind check.py knows")


# --- what the schemas cannot see ------------------------------------------------


def expand(value, env):
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def container_env(c, pod_name):
    """The container's environment as Kubernetes makes it for pod_name."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            for ref in re.findall(r"\$\((\w+)\)", e["value"]):
                check(ref in env, f"env {e['name']}: $({ref}) is not defined before it")
            env[e["name"]] = expand(e["value"], env)
        else:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}[field]
    return env


def subset(small, big):
    return all(big.get(k) == v for k, v in small.items())


def under(path, mount):
    return path.startswith(mount.rstrip("/") + "/")


def check_objects(docs, overlay):
    by = {key(d): d for d in docs}
    sts = by[("StatefulSet", "raft")]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    (c,) = pod["containers"]
    ports = {p["name"]: p for p in c["ports"]}

    check(subset(spec["selector"]["matchLabels"], labels), "StatefulSet selector vs pod labels")
    headless = by.get(("Service", spec["serviceName"]))
    if check(headless, f"serviceName {spec['serviceName']} names a Service"):
        check(headless["spec"].get("clusterIP") == "None", "the peer Service is headless")
        check(headless["spec"].get("publishNotReadyAddresses") is True,
              "the peer Service publishes not-ready pods' names")
    check(spec.get("podManagementPolicy") == "Parallel", "podManagementPolicy: Parallel")
    for d in docs:
        if d["kind"] == "Service":
            check(subset(d["spec"]["selector"], labels), f"Service {key(d)[1]} selects the pods")
            for p in d["spec"]["ports"]:
                cp = ports.get(p["targetPort"])
                if check(cp, f"Service {key(d)[1]}: targetPort {p['targetPort']} is a container port"):
                    check(cp["protocol"] == p["protocol"] and cp["containerPort"] == p["port"],
                          f"Service {key(d)[1]}: port {p['name']} matches the container's")
        if d["kind"] == "PodDisruptionBudget":
            check(subset(d["spec"]["selector"]["matchLabels"], labels), "PDB selects the pods")
            check(d["spec"].get("maxUnavailable") == 1, "PDB: maxUnavailable 1")

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        check(get["port"] in ports, f"{probe}: port {get['port']} is a container port")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness on /healthz")

    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    check(pod["terminationGracePeriodSeconds"] > pause + SIGTERM_TRANSFER_S + 5,
          "terminationGracePeriodSeconds leaves time for the pause, the transfer and a stop")

    sc, psc = c["securityContext"], pod["securityContext"]
    check(psc.get("runAsNonRoot") and psc.get("runAsUser", 0) > 0, "pod runs as non-root")
    check(psc.get("fsGroup") == psc.get("runAsGroup"), "fsGroup is the process's group")
    check(sc.get("readOnlyRootFilesystem") is True, "read-only root file system")
    check(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "every capability dropped")
    check(pod.get("enableServiceLinks") is False,
          "enableServiceLinks: false (no RAFT_CLIENT_PORT=tcp://... beside the settings)")
    check(c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"],
          "memory requests and limits")

    check_settings(spec, c, ports, overlay, by)


def check_settings(spec, c, ports, overlay, by):
    """The RAFT_* settings against the pods' names, ports and mounts."""
    pod = spec["template"]["spec"]
    replicas = spec["replicas"]
    env0 = container_env(c, "raft-0")
    for var in ("RAFT_INITIAL_CLUSTER", "RAFT_PEER_ADVERTISE", "RAFT_CLIENT_ADVERTISE",
                "RAFT_PEER_LISTEN", "RAFT_CLIENT_LISTEN", "RAFT_DATA_DIR", "RAFT_TLS_CA",
                "RAFT_TLS_CERT", "RAFT_TLS_KEY", "RAFT_CACERT", "CREDENTIALS_DIRECTORY",
                "RAFT_AUTH_TOKEN_FILE", "RAFT_ADMIN_TOKEN_FILE", "RAFT_TOKEN_FILE"):
        if not check(var in env0, f"{var} is set"):
            env0[var] = ""
    peer_domain = f"{spec['serviceName']}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"
    expected = ",".join(
        f"{i + 1}=raft-{i}.{peer_domain}:{ports['peer']['containerPort']}"
        f"/raft-{i}.{peer_domain}:{ports['client']['containerPort']}"
        for i in range(replicas)
    )
    check(env0.get("RAFT_INITIAL_CLUSTER") == expected,
          f"RAFT_INITIAL_CLUSTER names the {replicas} pods, node i+1 = raft-i: "
          f"{env0.get('RAFT_INITIAL_CLUSTER')!r} != {expected!r}")
    check(env0.get("RAFT_ID_FROM_HOSTNAME") == "true", "node id from the pod's host name")
    for i in range(replicas):
        env = {**env0, **container_env(c, f"raft-{i}")}
        entry = expected.split(",")[i].split("=", 1)[1].split("/")
        check(env.get("RAFT_PEER_ADVERTISE") == entry[0], f"raft-{i}: peer address = its entry")
        check(env.get("RAFT_CLIENT_ADVERTISE") == entry[1], f"raft-{i}: client address = its entry")
    for var, port in (("RAFT_PEER_LISTEN", "peer"), ("RAFT_CLIENT_LISTEN", "client")):
        check(env0[var].endswith(f":{ports[port]['containerPort']}"), f"{var} on the {port} port")

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    for m in c["volumeMounts"]:
        check(m["name"] in volumes or m["name"] in claims, f"mount {m['mountPath']}: a volume")
    certs_mount = next(p for p, m in mounts.items() if m["name"] == "certs")
    data_mount = next(p for p, m in mounts.items() if m["name"] in claims)
    check(under(env0["RAFT_DATA_DIR"], data_mount) and env0["RAFT_DATA_DIR"] != data_mount,
          "RAFT_DATA_DIR is a directory of its own on the data volume")
    for var in ("RAFT_TLS_CA", "RAFT_TLS_CERT", "RAFT_TLS_KEY", "RAFT_CACERT"):
        check(under(env0[var], certs_mount), f"{var} is in the certs volume")
    creds = env0["CREDENTIALS_DIRECTORY"]
    for var in ("RAFT_AUTH_TOKEN_FILE", "RAFT_ADMIN_TOKEN_FILE", "RAFT_TOKEN_FILE"):
        m = mounts.get(env0[var])
        check(m and m.get("subPath") and os.path.dirname(env0[var]) == creds,
              f"{var} is a file mounted by subPath in CREDENTIALS_DIRECTORY")

    # The file names in the certs volume are those the settings name.
    files = {"ca.pem"} | {f"node-{i}.{x}" for i in range(1, replicas + 1) for x in ("pem", "key")}
    vol = volumes["certs"]
    if not overlay:
        check(vol["secret"]["secretName"] == "raft-certs" and "items" not in vol["secret"],
              "certs: every key of the raft-certs Secret")
    else:
        given = {
            i["path"]: (s["secret"]["name"], i["key"])
            for s in vol["projected"]["sources"]
            for i in s["secret"]["items"]
        }
        check(set(given) == files, f"certs: projected files {sorted(given)} != {sorted(files)}")
        check_certificates(by, given, replicas, peer_domain)
    for var in ("RAFT_TLS_CERT", "RAFT_TLS_KEY"):
        for i in range(1, replicas + 1):
            name = os.path.basename(env0[var].replace("{id}", str(i)))
            check(name in files, f"{var} for node {i}: {name} is in the certs volume")


def check_certificates(by, given, replicas, peer_domain):
    issuers = {n for (k, n) in by if k == "Issuer"}
    for i in range(1, replicas + 1):
        if f"node-{i}.pem" not in given:
            continue
        secret = given[f"node-{i}.pem"][0]
        cert = next(
            (d for d in by.values() if d["kind"] == "Certificate"
             and d["spec"]["secretName"] == secret), None)
        if not check(cert, f"a Certificate writes Secret {secret}"):
            continue
        s = cert["spec"]
        check(s["issuerRef"]["name"] in issuers, f"{secret}: its Issuer is in the overlay")
        check(f"node-{i}.raft" in s["dnsNames"], f"{secret}: names node-{i}.raft (peer TLS)")
        check(f"raft-{i - 1}.{peer_domain}" in s["dnsNames"],
              f"{secret}: names raft-{i - 1}.{peer_domain} (HTTPS forwarding)")
        check("127.0.0.1" in s.get("ipAddresses", []), f"{secret}: names 127.0.0.1 (ctl)")
        check({"server auth", "client auth"} <= set(s["usages"]), f"{secret}: both usages")
        check(given.get(f"node-{i}.key") == (secret, "tls.key"), f"node-{i}.key from {secret}")


def check_added(base, added):
    """deploy/k8s/added: the StatefulSet raft, joining instead of bootstrapping."""
    sts1 = next(d for d in base if d["kind"] == "StatefulSet")
    (sts2,) = added
    check(key(sts2) == ("StatefulSet", "raft-added"), f"added: {key(sts2)}")
    s1, s2 = sts1["spec"], sts2["spec"]
    check(s2.get("ordinals", {}).get("start") == s1["replicas"],
          "added: ordinals start after the initial voters' (ids go on from theirs)")
    l1, l2 = s1["template"]["metadata"]["labels"], s2["template"]["metadata"]["labels"]
    check(subset(s2["selector"]["matchLabels"], l2), "added: selector vs pod labels")
    check(not subset(s1["selector"]["matchLabels"], l2)
          and not subset(s2["selector"]["matchLabels"], l1),
          "the two StatefulSets' selectors do not overlap")
    for d in base:
        if d["kind"] in ("Service", "PodDisruptionBudget"):
            sel = d["spec"]["selector"]
            check(subset(sel.get("matchLabels", sel), l2), f"{key(d)[1]} selects the added pods")
    check(s2["serviceName"] == s1["serviceName"], "added: the same headless Service")
    c1 = s1["template"]["spec"]["containers"][0]
    c2 = s2["template"]["spec"]["containers"][0]
    e1 = {e["name"]: e for e in c1["env"]}
    e2 = {e["name"]: e for e in c2["env"]}
    check(set(e1) - set(e2) == {"RAFT_INITIAL_CLUSTER"} and set(e2) - set(e1) == {"RAFT_JOIN"},
          "added: RAFT_JOIN instead of RAFT_INITIAL_CLUSTER, every other setting the same")
    check(all(e1[n] == e2[n] for n in set(e1) & set(e2)), "added: the same values")
    same = {k: v for k, v in c2.items() if k != "env"} == {k: v for k, v in c1.items() if k != "env"}
    check(same, "added: the same container but for the environment")
    pod = f"raft-added-{s1['replicas']}"
    env = container_env(c2, pod)
    client = next(d for d in base if key(d) == ("Service", "raft-client"))
    port = client["spec"]["ports"][0]["port"]
    want = f"https://raft-client.{NAMESPACE}.svc.{CLUSTER_DOMAIN}:{port}"
    check(env.get("RAFT_JOIN") == want, f"added: RAFT_JOIN {env.get('RAFT_JOIN')!r} != {want!r}")
    peer = f"{pod}.{s1['serviceName']}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"
    check(env["RAFT_PEER_ADVERTISE"].startswith(peer + ":"), f"added: {pod} advertises {peer}")


# --- the binary --------------------------------------------------------------


def help_vars(binary, *args):
    out = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{binary} {' '.join(args)} --help failed: {out.stderr.strip()}")
    return set(re.findall(r"\[env: (RAFT_\w+)=", out.stdout))


def check_binary(docs, binary):
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        check_binary_settings(sts, binary)


def check_binary_settings(sts, binary):
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    before = len(failures)
    check(c["args"] == ["run"], "the container runs `raft-node run`, settings in RAFT_* variables")
    run_vars, ctl_vars = help_vars(binary, "run"), help_vars(binary, "ctl")
    check(run_vars, f"`{binary} run --help` lists RAFT_* variables")
    for e in c["env"]:
        name = e["name"]
        if not name.startswith("RAFT_"):
            continue
        known = ctl_vars if name in CTL_VARS else run_vars
        which = "ctl" if name in CTL_VARS else "run"
        check(name in known, f"{name} is not a variable of `raft-node {which}` ({binary})")
    if len(failures) == before:
        print(f"  {key(sts)[1]}: each RAFT_* variable known to {binary} run/ctl --help")


# --- the validator refuses what it should -----------------------------------


def check_validator_refuses(docs):
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    bad_field = copy.deepcopy(sts)
    bad_field["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    bad_type = copy.deepcopy(sts)
    bad_type["spec"]["replicas"] = "three"
    with tempfile.TemporaryDirectory() as tmp:
        for name, doc in (("unknown-field", bad_field), ("wrong-type", bad_type)):
            path = os.path.join(tmp, f"{name}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(doc, f)
            out = subprocess.run(
                [sys.executable, "-m", "kubernetes_validate", "--strict",
                 "-k", K8S_VERSIONS[0], path],
                capture_output=True, text=True, check=False)
            check(out.returncode != 0,
                  f"kubernetes-validate --strict accepted a broken StatefulSet ({name})")
            print(f"  a StatefulSet with a {name.replace('-', ' ')} is refused: "
                  f"exit {out.returncode}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    base = build(HERE)
    overlay_dir = os.path.join(HERE, "cert-manager")
    overlay = build(overlay_dir)
    added_dir = os.path.join(HERE, "added")
    added = build(added_dir)
    for d in ("base", "base/statefulset", "cert-manager", "added"):
        listed_files(os.path.join(HERE, d))
    compare_with_kubectl(HERE, base)
    compare_with_kubectl(overlay_dir, overlay)
    compare_with_kubectl(added_dir, added)
    validate(base, "deploy/k8s")
    validate(overlay, "deploy/k8s/cert-manager")
    validate(added, "deploy/k8s/added")
    check_objects(base, overlay=False)
    check_objects(overlay, overlay=True)
    check_added(base, added)
    check_binary(base + added, binary)
    check_validator_refuses(base)
    if failures:
        sys.exit(f"deploy/k8s: {len(failures)} check(s) failed")
    print("  deploy/k8s: every check passed")


if __name__ == "__main__":
    main()
