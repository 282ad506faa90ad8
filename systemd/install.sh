#!/bin/sh
# Installs Ambit on a VM or bare-metal host as a systemd service (DESIGN §8).
# Step by step for operators: docs/vm.md.
#
#   install.sh controller [options]
#   install.sh agent --node NAME --controller HOST:PORT --address IP --token TOKEN [options]
#
# What it does, in this order:
#   1. Validates every argument before it changes anything: the settings go
#      through the daemons' own config parser, the join token's format is
#      checked, and when the controller is reachable it must present the CA
#      the token pins (with the agent's own check, agent/identity/ca-client.ts).
#   2. Installs the runtime tree into --prefix (default /usr/lib/ambit): the
#      TypeScript sources (run by Node's type stripping), ambit-dataplane (the
#      data path), the production node_modules (including Node.js 24 itself, the
#      "node" package), docs/vm.md and small wrappers in <prefix>/bin. It is
#      replaced as a whole, and only when its manifest differs.
#   3. Creates the system user `ambit` if missing; installs the sysusers.d
#      entry, the unit (and drop-ins) into --systemd-dir, the env file
#      <etc>/<role>.env (0600 root) and a symlink <bin-dir>/ambitctl.
#   4. systemctl daemon-reload && systemctl enable --now, unless --no-start,
#      --root, or systemd is not running (then it prints what to run).
#
# Idempotent: every file is compared before it is written, and a second run
# with the same arguments prints only "unchanged" lines and touches nothing.
# The join token is written only while the agent has no node credentials
# (<root>/var/lib/ambit-agent/node.json); once the node has joined, a re-run
# removes the spent token from agent.env.
set -eu
umask 022

PROG=install.sh
SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)

usage() {
  cat <<'EOF'
usage:
  install.sh controller [options]
  install.sh agent --node NAME --controller HOST:PORT --address IP --token TOKEN [options]

agent:
  --node NAME             this host's node name (as in "ambitctl node token create --node NAME")
  --controller HOST:PORT  the controller's gRPC address (port defaults to 15012);
                          several replicas: a comma-separated list of IP addresses
  --address IP            this host's address: HBONE, metrics and readiness listen here
  --token TOKEN           join token; needed until the node has joined
  --capture MODE          transparent (iptables, uid owner match; default) or none (SOCKS5/upstreams only)
  --mode MODE             strict (default: refuse plaintext to captured workloads) or permissive
  --iptables BACKEND      auto (default), nft or legacy: legacy adds CAP_NET_RAW (a drop-in)
controller:
  --listen HOST:PORT      gRPC address (default 0.0.0.0:15012)
  --monitoring HOST:PORT  /metrics and /healthz/ready (default 0.0.0.0:15014)
  --trust-domain NAME     SPIFFE trust domain (default cluster.local)
both:
  --set AMBIT_KEY=VALUE   any other daemon setting, written to the env file (repeatable)
  --from DIR              built checkout to install from (default: the one holding this script)
  --prefix DIR            runtime tree (default /usr/lib/ambit)
  --etc DIR               env files (default /etc/ambit)
  --systemd-dir DIR       unit files (default /etc/systemd/system)
  --bin-dir DIR           where the ambitctl symlink goes (default /usr/local/bin)
  --root DIR              install below DIR (staged images, tests); never runs systemctl
  --no-start              do not run systemctl; print the commands instead
  -h, --help
EOF
}

say() { printf '%s\n' "$*"; }
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf '%s: nothing was changed.\n' "$PROG" >&2
  exit 1
}
report() { printf '%-10s %s\n' "$1" "$2"; }

# ------------------------------------------------------------------ arguments

[ $# -ge 1 ] || { usage >&2; exit 2; }
ROLE=$1
shift
case $ROLE in
  agent | controller) ;;
  -h | --help) usage; exit 0 ;;
  *) printf '%s: error: the first argument must be "agent" or "controller", not "%s"\n' "$PROG" "$ROLE" >&2; usage >&2; exit 2 ;;
esac

NODE_NAME='' CONTROLLER='' ADDRESS='' TOKEN='' CAPTURE=transparent MODE=strict IPTABLES=auto
LISTEN='' MONITORING='' TRUST_DOMAIN=''
EXTRA='' FROM='' PREFIX=/usr/lib/ambit ETC=/etc/ambit SYSTEMD_DIR=/etc/systemd/system BIN_DIR=/usr/local/bin
ROOT=/ NO_START=0
NL='
'

agent_only() { [ "$ROLE" = agent ] || die "$1 is an agent option"; }
controller_only() { [ "$ROLE" = controller ] || die "$1 is a controller option"; }

while [ $# -gt 0 ]; do
  opt=$1
  case $opt in
    --*=*) val=${opt#*=}; opt=${opt%%=*}; shift ;;
    --no-start | -h | --help) val=''; shift ;;
    --*) [ $# -ge 2 ] || die "$opt needs a value"; val=$2; shift 2 ;;
    *) die "unexpected argument \"$opt\" (see --help)" ;;
  esac
  case $opt in
    --node) agent_only "$opt"; NODE_NAME=$val ;;
    --controller) agent_only "$opt"; CONTROLLER=$val ;;
    --address) agent_only "$opt"; ADDRESS=$val ;;
    --token) agent_only "$opt"; TOKEN=$val ;;
    --capture) agent_only "$opt"; CAPTURE=$val ;;
    --mode) agent_only "$opt"; MODE=$val ;;
    --iptables) agent_only "$opt"; IPTABLES=$val ;;
    --listen) controller_only "$opt"; LISTEN=$val ;;
    --monitoring) controller_only "$opt"; MONITORING=$val ;;
    --trust-domain) controller_only "$opt"; TRUST_DOMAIN=$val ;;
    --set) EXTRA="$EXTRA$val$NL" ;;
    --from) FROM=$val ;;
    --prefix) PREFIX=$val ;;
    --etc) ETC=$val ;;
    --systemd-dir) SYSTEMD_DIR=$val ;;
    --bin-dir) BIN_DIR=$val ;;
    --root) ROOT=$val ;;
    --no-start) NO_START=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $opt (see --help)" ;;
  esac
done

# ------------------------------------------------------------------ validation (nothing changes before the end of this section)

# Paths end up in unit files and sed expressions: keep them plain.
for pair in "--prefix=$PREFIX" "--etc=$ETC" "--systemd-dir=$SYSTEMD_DIR" "--bin-dir=$BIN_DIR"; do
  name=${pair%%=*} path=${pair#*=}
  case $path in
    /*) ;;
    *) die "$name must be an absolute path, not \"$path\"" ;;
  esac
  case $path in
    *[!A-Za-z0-9._/-]* | */ | *//*) die "$name \"$path\" may only contain letters, digits, \".\", \"_\", \"-\" and single \"/\" separators, without a trailing \"/\"" ;;
  esac
done

[ -d "$ROOT" ] || die "--root $ROOT is not a directory"
ROOT=$(CDPATH='' cd -- "$ROOT" && pwd)
if [ "$ROOT" = / ]; then R=''; else R=$ROOT; fi
# Files are root's. A staged install (--root) may run unprivileged: then the
# files are the caller's and the user is not created (a package build does it).
if [ "$(id -u)" = 0 ]; then
  IS_ROOT=1 OWNER='0 0'
elif [ -n "$R" ]; then
  IS_ROOT=0 OWNER="$(id -u) $(id -g)"
else
  die "run as root (it creates a system user and writes to $PREFIX, $ETC and $SYSTEMD_DIR), or stage with --root DIR"
fi

[ -n "$FROM" ] || FROM=$SCRIPT_DIR/..
[ -d "$FROM" ] || die "--from $FROM is not a directory"
FROM=$(CDPATH='' cd -- "$FROM" && pwd)
NODE_BIN=$FROM/node_modules/node/bin/node
[ -x "$NODE_BIN" ] || die "$FROM is not a built checkout: $NODE_BIN is missing (run \"npm ci\" there)"
HELPER=$SCRIPT_DIR/install-helper.mjs
for f in "$HELPER" "$SCRIPT_DIR/wait-ready.mjs" "$SCRIPT_DIR/ambit-$ROLE.service" "$SCRIPT_DIR/ambit.sysusers.conf"; do
  [ -f "$f" ] || die "$f is missing: run install.sh from an Ambit checkout"
done
helper() { "$NODE_BIN" "$HELPER" "$@"; }

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/ambit-install.XXXXXX")
NEW_TREE=''
cleanup() {
  rm -rf "$STAGE"
  if [ -n "$NEW_TREE" ]; then rm -rf "$NEW_TREE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --set lines: AMBIT_KEY=VALUE, values plain enough for EnvironmentFile= without quoting.
MANAGED_KEYS='AMBIT_DATA_DIR AMBIT_NODE AMBIT_CONTROLLER AMBIT_ADDRESS AMBIT_JOIN AMBIT_CAPTURE AMBIT_CAPTURE_MODE AMBIT_MODE AMBIT_LISTEN AMBIT_MONITORING AMBIT_TRUST_DOMAIN'
: >"$STAGE/extra"
while IFS= read -r kv; do
  [ -n "$kv" ] || continue
  key=${kv%%=*}
  case $kv in
    *=*) ;;
    *) die "--set \"$kv\" must be AMBIT_KEY=VALUE" ;;
  esac
  case $key in
    AMBIT_[A-Z0-9]*) ;;
    *) die "--set \"$kv\": the key must start with AMBIT_" ;;
  esac
  case $key in
    *[!A-Z0-9_]*) die "--set \"$kv\": the key may only contain A-Z, 0-9 and _" ;;
  esac
  case ${kv#*=} in
    *[!]A-Za-z0-9_.,:/@%+=[-]*) die "--set \"$kv\": the value may only contain letters, digits and _ . , : / @ % + = [ ] -" ;;
  esac
  for k in $MANAGED_KEYS; do
    [ "$key" != "$k" ] || die "--set $key: use the dedicated option instead (see --help)"
  done
  printf '%s\n' "$kv" >>"$STAGE/extra"
done <<EOF
$EXTRA
EOF

# The same character rule for the values this script writes itself.
plain() { # NAME VALUE
  case $2 in
    '') die "$1 is required" ;;
    *[!]A-Za-z0-9_.,:/@%+=[-]*) die "$1 \"$2\" contains characters no valid value has" ;;
  esac
}

TOKEN_FORMAT='ambit-join.<16 hex>.<43 base64url>.<64 hex>'
check_token() { # TOKEN WHERE
  case $1 in
    *[!A-Za-z0-9._-]*) ok=0 ;;
    *) if printf '%s\n' "$1" | grep -Eq '^ambit-join\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}\.[0-9a-f]{64}$'; then ok=1; else ok=0; fi ;;
  esac
  [ "$ok" = 1 ] || die "invalid join token $2: expected $TOKEN_FORMAT as printed by \"ambitctl node token create --node NAME\" (got ${#1} characters)"
}

ENV_FILE=$R$ETC/$ROLE.env
UNIT=ambit-$ROLE.service
DROPIN_DIR=$R$SYSTEMD_DIR/$UNIT.d
AGENT_STATE=$R/var/lib/ambit-agent
WRITE_TOKEN=''
ENV_NEW=$STAGE/$ROLE.env

if [ "$ROLE" = agent ]; then
  plain --node "$NODE_NAME"
  plain --controller "$CONTROLLER"
  plain --address "$ADDRESS"
  case $CAPTURE in transparent | none) ;; *) die "--capture must be transparent or none, not \"$CAPTURE\"" ;; esac
  case $MODE in strict | permissive) ;; *) die "--mode must be strict or permissive, not \"$MODE\"" ;; esac
  case $IPTABLES in auto | nft | legacy) ;; *) die "--iptables must be auto, nft or legacy, not \"$IPTABLES\"" ;; esac

  [ -z "$TOKEN" ] || check_token "$TOKEN" "(--token)"
  if [ -f "$AGENT_STATE/node.json" ]; then
    joined=$(sed -n 's/.*"node":"\([^"]*\)".*/\1/p' "$AGENT_STATE/node.json")
    [ -z "$joined" ] || [ "$joined" = "$NODE_NAME" ] || die "this host joined the mesh as node $joined ($AGENT_STATE/node.json), not --node $NODE_NAME: keep --node $joined, or remove $AGENT_STATE to join anew with a token for $NODE_NAME"
    [ -z "$TOKEN" ] || note "this node has already joined ($AGENT_STATE/node.json holds its credentials): the token is not written (join tokens are single-use)"
  else
    WRITE_TOKEN=$TOKEN
    if [ -z "$WRITE_TOKEN" ] && [ -f "$ENV_FILE" ]; then
      WRITE_TOKEN=$(sed -n 's/^AMBIT_JOIN=//p' "$ENV_FILE" | tail -n 1)
      [ -z "$WRITE_TOKEN" ] || check_token "$WRITE_TOKEN" "(AMBIT_JOIN in $ENV_FILE)"
    fi
    [ -n "$WRITE_TOKEN" ] || die "--token is required: this node has not joined yet (no $AGENT_STATE/node.json). On the controller host run: ambitctl node token create --node $NODE_NAME"
  fi

  if [ "$CAPTURE" = transparent ] && [ "$IPTABLES" = auto ]; then
    if command -v iptables >/dev/null 2>&1; then
      case $(iptables --version 2>/dev/null) in
        *legacy*) IPTABLES=legacy ;;
        *) IPTABLES=nft ;;
      esac
    elif [ -z "$R" ]; then
      die "--capture transparent needs iptables (with iptables-restore) on this host: install it (e.g. apt-get install iptables), or pass --capture none"
    else
      IPTABLES=nft
    fi
  fi

  {
    say "# Ambit agent settings, written by install.sh (re-running it rewrites this file)."
    say "# Each line is AMBIT_<FLAG>=value; see: $PREFIX/bin/ambit-agent --help"
    say "AMBIT_NODE=$NODE_NAME"
    say "AMBIT_CONTROLLER=$CONTROLLER"
    say "AMBIT_ADDRESS=$ADDRESS"
    say "AMBIT_CAPTURE=$CAPTURE"
    [ "$CAPTURE" = none ] || say "AMBIT_CAPTURE_MODE=vm"
    say "AMBIT_MODE=$MODE"
    cat "$STAGE/extra"
    if [ -n "$WRITE_TOKEN" ]; then
      say "# Join token for the first start (single use; ignored once the node has joined,"
      say "# and removed by the next install.sh run after that)."
      say "AMBIT_JOIN=$WRITE_TOKEN"
    fi
  } >"$ENV_NEW"
else
  [ -z "$LISTEN" ] || plain --listen "$LISTEN"
  [ -z "$MONITORING" ] || plain --monitoring "$MONITORING"
  [ -z "$TRUST_DOMAIN" ] || plain --trust-domain "$TRUST_DOMAIN"
  {
    say "# Ambit controller settings, written by install.sh (re-running it rewrites this file)."
    say "# Each line is AMBIT_<FLAG>=value; see: $PREFIX/bin/ambit-controller --help"
    [ -z "$LISTEN" ] || say "AMBIT_LISTEN=$LISTEN"
    [ -z "$MONITORING" ] || say "AMBIT_MONITORING=$MONITORING"
    [ -z "$TRUST_DOMAIN" ] || say "AMBIT_TRUST_DOMAIN=$TRUST_DOMAIN"
    cat "$STAGE/extra"
  } >"$ENV_NEW"
fi

# Every setting through the daemon's own parser (names the bad key and value).
helper check-config "$FROM" "$ROLE" "$ENV_NEW" || die "fix the setting above"

if [ "$ROLE" = agent ] && [ -n "$WRITE_TOKEN" ]; then
  pin=${WRITE_TOKEN##*.}
  set +e
  out=$(helper check-pin "$FROM" "$CONTROLLER" "$pin" 5000 2>&1)
  rc=$?
  set -e
  case $rc in
    0) say "$out" ;;
    3) note "cannot reach the controller at $CONTROLLER now ($out); the agent checks the token's CA pin itself when it first starts" ;;
    *) die "the token does not match the controller at $CONTROLLER: $out. Is --controller right, and was the token created by this controller (ambitctl node token create --node $NODE_NAME)?" ;;
  esac
fi

if [ "$ROLE" = agent ] && [ -z "$R" ] && command -v ip >/dev/null 2>&1; then
  if ! ip -o addr show 2>/dev/null | grep -Eq "inet6? $ADDRESS/"; then
    note "warning: $ADDRESS is not an address of this host now; the agent listens on it"
  fi
fi

# Generated files of the runtime tree: wrappers that run the bundled Node.js.
mkdir -p "$STAGE/gen/bin" "$STAGE/gen/lib"
cp "$SCRIPT_DIR/wait-ready.mjs" "$STAGE/gen/lib/wait-ready.mjs"
wrapper() { # NAME ENTRY WHAT
  cat >"$STAGE/gen/bin/$1" <<EOF
#!/bin/sh
# $3, run by the Node.js bundled in $PREFIX (generated by install.sh).
exec $PREFIX/node_modules/node/bin/node $PREFIX/$2 "\$@"
EOF
  chmod 0755 "$STAGE/gen/bin/$1"
}
wrapper ambit-controller controller/main.ts "The Ambit controller"
wrapper ambit-agent agent/main.ts "The Ambit agent"
wrapper ambitctl controller/cli/ambitctl.mjs "ambitctl, the Ambit CLI"
wrapper ambit-wait-ready lib/wait-ready.mjs "The units' ExecStartPost= readiness gate"
helper plan "$FROM" "$STAGE/gen" >"$STAGE/manifest" || die "cannot list the runtime files of $FROM"

# Units with the paths of this installation.
render() { sed -e "s|/usr/lib/ambit|$PREFIX|g" -e "s|/etc/ambit|$ETC|g" "$1" >"$2"; }
render "$SCRIPT_DIR/$UNIT" "$STAGE/$UNIT"
if [ "$ROLE" = agent ]; then
  render "$SCRIPT_DIR/ambit-agent-iptables-legacy.conf" "$STAGE/iptables-legacy.conf"
  render "$SCRIPT_DIR/ambit-agent-capture-none.conf" "$STAGE/capture-none.conf"
fi

USER_MISSING=0
if [ -z "$R" ]; then
  getent passwd ambit >/dev/null 2>&1 || USER_MISSING=1
elif [ -f "$R/etc/passwd" ]; then
  grep -q '^ambit:' "$R/etc/passwd" || USER_MISSING=1
fi
if [ "$USER_MISSING" = 1 ] && [ "$IS_ROOT" = 1 ]; then
  command -v useradd >/dev/null 2>&1 || die "the user ambit does not exist and useradd is not available to create it"
fi

# ------------------------------------------------------------------ changes

CHANGED=0       # anything at all
UNITS_CHANGED=0 # unit files or drop-ins: daemon-reload

ensure_dir() { # DIR MODE
  if [ ! -d "$1" ]; then
    mkdir -p "$1"
    chmod "$2" "$1"
    report created "$1/"
    CHANGED=1
  fi
}

# put_file and remove_file set DID (1: changed something) instead of returning
# a status: "set -e" does not apply inside a function called as a condition.
put_file() { # SRC DEST MODE (octal, as stat -c %a prints it)
  DID=0
  if [ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$1" "$2" && [ "$(stat -c '%a %u %g' "$2")" = "$3 $OWNER" ]; then
    report unchanged "$2"
    return 0
  fi
  if [ -e "$2" ]; then verb=updated; else verb=installed; fi
  ensure_dir "$(dirname "$2")" 755
  tmp=$(dirname "$2")/.$(basename "$2").ambit-new
  rm -f "$tmp"
  (umask 077 && cat "$1" >"$tmp")
  if [ "$IS_ROOT" = 1 ]; then chown 0:0 "$tmp"; fi
  chmod "$3" "$tmp"
  mv -f "$tmp" "$2"
  report "$verb" "$2"
  CHANGED=1
  DID=1
}

remove_file() { # PATH
  DID=0
  if [ -e "$1" ] || [ -L "$1" ]; then
    rm -f "$1"
    report removed "$1"
    CHANGED=1
    DID=1
  fi
}

# The system user.
if [ "$USER_MISSING" = 1 ] && [ "$IS_ROOT" = 0 ]; then
  report skipped "user ambit (not running as root)"
elif [ "$USER_MISSING" = 1 ]; then
  shell=/usr/sbin/nologin
  [ -x /usr/sbin/nologin ] || shell=/sbin/nologin
  if [ -z "$R" ]; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell "$shell" --comment 'Ambit service mesh' ambit
  else
    useradd --prefix "$R" --system --user-group --no-create-home --home-dir /nonexistent --shell "$shell" --comment 'Ambit service mesh' ambit
  fi
  report created "user ambit"
  CHANGED=1
elif [ -n "$R" ] && [ ! -f "$R/etc/passwd" ]; then
  report skipped "user ambit ($R/etc/passwd does not exist)"
else
  report unchanged "user ambit"
fi
put_file "$SCRIPT_DIR/ambit.sysusers.conf" "$R/usr/lib/sysusers.d/ambit.conf" 644

# The runtime tree, replaced whole when its manifest differs.
DEST=$R$PREFIX
APP_CHANGED=0
if [ -f "$DEST/.ambit-manifest" ] && cmp -s "$STAGE/manifest" "$DEST/.ambit-manifest" && helper verify "$DEST" >/dev/null; then
  report unchanged "$DEST/ ($(grep -vc '^#' "$STAGE/manifest") files)"
else
  ensure_dir "$(dirname "$DEST")" 755
  NEW_TREE=$DEST.new.$$
  rm -rf "$NEW_TREE"
  helper copy "$FROM" "$STAGE/gen" "$NEW_TREE"
  if [ -e "$DEST" ]; then
    mv "$DEST" "$DEST.old.$$"
    mv "$NEW_TREE" "$DEST"
    rm -rf "$DEST.old.$$"
    report updated "$DEST/"
  else
    mv "$NEW_TREE" "$DEST"
    report installed "$DEST/"
  fi
  NEW_TREE=''
  APP_CHANGED=1
  CHANGED=1
fi

# ambitctl on the PATH.
LINK=$R$BIN_DIR/ambitctl
if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PREFIX/bin/ambitctl" ]; then
  report unchanged "$LINK"
elif [ -e "$LINK" ] && [ ! -L "$LINK" ]; then
  report skipped "$LINK (exists and is not a symlink; left alone)"
else
  ensure_dir "$R$BIN_DIR" 755
  if [ -L "$LINK" ]; then verb=updated; else verb=installed; fi
  ln -sfn "$PREFIX/bin/ambitctl" "$LINK"
  report "$verb" "$LINK -> $PREFIX/bin/ambitctl"
  CHANGED=1
fi

# Unit and drop-ins.
put_file "$STAGE/$UNIT" "$R$SYSTEMD_DIR/$UNIT" 644
UNITS_CHANGED=$DID
if [ "$ROLE" = agent ]; then
  if [ "$CAPTURE" = transparent ] && [ "$IPTABLES" = legacy ]; then
    put_file "$STAGE/iptables-legacy.conf" "$DROPIN_DIR/iptables-legacy.conf" 644
  else
    remove_file "$DROPIN_DIR/iptables-legacy.conf"
  fi
  [ "$DID" = 0 ] || UNITS_CHANGED=1
  if [ "$CAPTURE" = none ]; then
    put_file "$STAGE/capture-none.conf" "$DROPIN_DIR/capture-none.conf" 644
  else
    remove_file "$DROPIN_DIR/capture-none.conf"
  fi
  [ "$DID" = 0 ] || UNITS_CHANGED=1
fi

# Settings (secrets: the token; root-only, read by systemd before it drops privileges).
ensure_dir "$R$ETC" 755
put_file "$ENV_NEW" "$ENV_FILE" 600
ENV_CHANGED=$DID

# ------------------------------------------------------------------ systemd

if [ "$NO_START" = 1 ] || [ -n "$R" ] || [ ! -d /run/systemd/system ]; then
  if [ "$NO_START" = 1 ]; then why='--no-start'; elif [ -n "$R" ]; then why="--root $ROOT"; else why='systemd is not running'; fi
  say ""
  say "not starting ($why); to start $UNIT:"
  say "  systemctl daemon-reload"
  say "  systemctl enable --now $UNIT"
  if [ "$CHANGED" = 1 ]; then say "  systemctl try-restart $UNIT   # if it was already running"; fi
else
  [ "$UNITS_CHANGED" = 0 ] || systemctl daemon-reload
  was_active=0
  if systemctl is-active --quiet "$UNIT"; then was_active=1; fi
  if ! systemctl enable --now "$UNIT"; then
    note "$UNIT did not start; see: journalctl -u $UNIT"
    exit 1
  fi
  if [ "$was_active" = 1 ] && { [ "$APP_CHANGED" = 1 ] || [ "$UNITS_CHANGED" = 1 ] || [ "$ENV_CHANGED" = 1 ]; }; then
    systemctl restart "$UNIT" || { note "$UNIT did not restart; see: journalctl -u $UNIT"; exit 1; }
    report restarted "$UNIT"
  elif [ "$was_active" = 1 ]; then
    report unchanged "$UNIT (running)"
  else
    report started "$UNIT"
  fi
fi

if [ "$ROLE" = controller ]; then
  say ""
  say "next: create a join token for each VM (as root on this host):"
  say "  ambitctl node token create --node vm-1"
fi
