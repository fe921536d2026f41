#!/usr/bin/env bash
# The MongoDB-wire test server for the mongodb:// monitor: SecantusDB (PyPI
# `SecantusDB`, a MongoDB-compatible server on WiredTiger; the real mongod is
# not packaged for Debian), installed with pip into a private virtualenv.
# Idempotent: does nothing when the pinned version is already there.
#   SECANTUS_VENV  where the virtualenv lives (default /opt/mongo-compat-venv;
#                  the test fixture crates/testkit/src/servers/mongo.rs reads
#                  the same variable)
# Needs Debian's python3-venv (listed in mongodb.txt beside this file).
set -euo pipefail
VENV=${SECANTUS_VENV:-/opt/mongo-compat-venv}
VERSION=0.7.0b3

installed() {
  [ -x "$VENV/bin/secantusd-py" ] &&
    "$VENV/bin/python" - "$VERSION" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("SecantusDB") == sys.argv[1] else 1)
PY
}

if installed; then
  echo "mongodb.sh: SecantusDB $VERSION is already in $VENV"
  exit 0
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "mongodb.sh: python3's venv module is missing: apt-get install python3-venv (or run scripts/install-deps.sh)" >&2
  exit 1
fi
echo "mongodb.sh: installing SecantusDB $VERSION into $VENV (pip, about 150 MB)"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --pre "SecantusDB==$VERSION" 'pymongo>=4,<5'
installed || { echo "mongodb.sh: SecantusDB did not install into $VENV" >&2; exit 1; }
"$VENV/bin/secantusd-py" --help >/dev/null
echo "mongodb.sh: done ($VENV/bin/secantusd-py)"
