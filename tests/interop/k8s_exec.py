"""Loads a kubeconfig whose user runs `cortexid token --format k8s` as an exec credential plugin,
through the official Python client (kubernetes.config.load_kube_config and its ExecProvider), and
prints the SHA-256 fingerprint (first 16 hex digits) of the bearer token it got, never the token.

    python3 k8s_exec.py KUBECONFIG

Exit 3 when the kubernetes package is not importable (the caller skips), 1 on any other failure.
"""

import hashlib
import sys

try:
    from kubernetes import client, config
except ImportError:
    print("the Python kubernetes package is not installed (pip install kubernetes)", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    cfg = client.Configuration()
    config.load_kube_config(config_file=sys.argv[1], client_configuration=cfg)
    # The client keeps "Bearer <token>" under "BearerToken" (older releases: "authorization").
    header = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization") or ""
    if not header.startswith("Bearer "):
        print("the exec credential produced no bearer token", file=sys.stderr)
        return 1
    token = header[len("Bearer "):]
    print(hashlib.sha256(token.encode()).hexdigest()[:16])
    return 0


if __name__ == "__main__":
    sys.exit(main())
