#!/usr/bin/env bash
# Install exnode as a system service on Debian (or any systemd Linux with Python 3.11+).
#
#   sudo packaging/install.sh            # install from this source tree
#   sudo packaging/install.sh SPEC       # or from a wheel, a path or 'exnode==0.1.0'
#   sudo EXNODE_EXTRAS=postgres packaging/install.sh   # with extras (comma-separated)
#
# Safe to run again (upgrades in place). It creates:
#   user and group  exnode (system account, no login shell)
#   /etc/exnode       0700 exnode:exnode   configuration (exnode.yaml, broker password)
#   /var/lib/exnode   0700 exnode:exnode   keys, state DB, control socket
#   /opt/exnode       a Python venv with exnode in it
#   /usr/bin/exnode   -> /opt/exnode/bin/exnode
#   /etc/systemd/system/exnode.service
# It neither writes a node configuration nor starts the service: see the next steps it
# prints, and README.md ("Setting up a center and a bureau").
set -euo pipefail

if [[ ${EUID:-$(id -u)} -ne 0 ]]; then
    echo "install.sh: must run as root (try: sudo $0 $*)" >&2
    exit 1
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(dirname "$HERE")
SPEC=${1:-$SRC}
EXTRAS=${EXNODE_EXTRAS:-}
PYTHON=${PYTHON:-python3}
USER_NAME=exnode
VENV=/opt/exnode
ETC=/etc/exnode
DATA=/var/lib/exnode
UNIT=/etc/systemd/system/exnode.service

say() { printf '• %s\n' "$*"; }

# --- Python ----------------------------------------------------------------------------
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: $PYTHON not found (apt-get install python3)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: exnode needs Python 3.11 or newer ($("$PYTHON" -V 2>&1) found)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing python3-venv"
        apt-get update -qq
        apt-get install -y -qq python3-venv >/dev/null
    else
        echo "install.sh: the Python venv module is missing (install python3-venv)" >&2
        exit 1
    fi
fi

# --- user and folders --------------------------------------------------------------------
if ! getent group "$USER_NAME" >/dev/null; then
    groupadd --system "$USER_NAME"
fi
if ! id -u "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --gid "$USER_NAME" --home-dir "$DATA" --no-create-home \
        --shell /usr/sbin/nologin --comment "exnode data-exchange node" "$USER_NAME"
    say "created system user $USER_NAME"
fi
install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$ETC" "$DATA"
say "$ETC and $DATA: 0700, owned by $USER_NAME"

# --- the program -----------------------------------------------------------------------
if [[ ! -x $VENV/bin/python ]]; then
    "$PYTHON" -m venv "$VENV"
    say "created venv $VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [[ -n $EXTRAS && ( -d $SPEC || $SPEC == *.whl ) ]]; then
    TARGET="$SPEC[$EXTRAS]"
elif [[ -n $EXTRAS && $SPEC == exnode* ]]; then
    TARGET="exnode[$EXTRAS]${SPEC#exnode}"
else
    TARGET=$SPEC
fi
"$VENV/bin/python" -m pip install --quiet --upgrade "$TARGET"
ln -sfn "$VENV/bin/exnode" /usr/bin/exnode
if [[ -f $SRC/README.md ]]; then
    install -m 0644 "$SRC/README.md" "$VENV/README.md"
fi
install -d -m 0755 "$VENV/share/mosquitto"
install -m 0644 "$HERE/mosquitto/exnode-dynsec.conf" "$HERE/mosquitto/exnode.conf" \
    "$HERE/mosquitto/exnode.acl" "$VENV/share/mosquitto/"
say "installed $(/usr/bin/exnode --version) in $VENV; /usr/bin/exnode -> $VENV/bin/exnode"

# --- the service -----------------------------------------------------------------------
install -m 0644 "$HERE/exnode.service" "$UNIT"
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
say "installed $UNIT (not enabled yet)"

cat <<EOF

Next steps (README.md, "Setting up a center and a bureau"):

 1. Write this node's configuration and keys, keeping keys and state in $DATA:
      sudo -u $USER_NAME exnode init --role bureau --id NODE-ID --dir $DATA \\
           --broker-host BROKER-HOST --broker-port 8883
      sudo mv $DATA/exnode.yaml $ETC/exnode.yaml
      sudo sed -i 's|^  data_dir: \\.\$|  data_dir: $DATA|' $ETC/exnode.yaml
    (on the center: --role center --id center; its broker-host is the name bureaus use)
 2. Set broker.username, broker.password_file and broker.tls.ca in $ETC/exnode.yaml,
    then: sudo -u $USER_NAME exnode -c $ETC/exnode.yaml config check
 3. Bureau only: sudo -u $USER_NAME exnode -c $ETC/exnode.yaml register TOKEN
 4. Start it:   sudo systemctl enable --now exnode
    Check it:   sudo -u $USER_NAME exnode -c $ETC/exnode.yaml status
 Center broker: Mosquitto examples are in $VENV/share/mosquitto/ (see packaging/README.md).
EOF
