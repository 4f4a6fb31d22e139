# shellcheck shell=bash
# Shared by the by-hand scripts that run real peers (scripts/bench-peers, scripts/soak):
# source it after `set -euo pipefail` and after setting SCRIPT (the name in messages).
#
#   PIDS                   processes started here; `cleanup_pids` stops them all
#   stop_pid PID           TERM, a bounded wait, KILL; forgets the PID
#   forget_pid PID         drop from PIDS one that exited and was waited for
#   free_port              a TCP port of 127.0.0.1 that was free a moment ago
#   wait_ready ADDR SECS   until inet:127.0.0.1:PORT or unix:PATH accepts connections
#   pf_write DIR SMTP_PORT SINK_PORT [MAIN_CF_LINE...]
#                          a private Postfix in DIR (etc/, queue/, data/, maillog): smtpd on
#                          127.0.0.1:SMTP_PORT relaying everything to 127.0.0.1:SINK_PORT;
#                          the extra lines are appended to main.cf (later lines win)
#   pf_start DIR SMTP_PORT LIFETIME_S
#                          its master in the foreground (sets PF_MASTER_PID), until smtpd
#                          answers; the master exits by itself after LIFETIME_S
#
# Postfix needs root. Everything listens on 127.0.0.1.

SCRIPT=${SCRIPT:-peers}
PIDS=()

forget_pid() {
  local pid=$1 p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# Stops one process we started: TERM, a bounded wait, then KILL; and forgets it, so the exit
# trap never signals a PID that may have been reused.
stop_pid() {
  local pid=$1
  forget_pid "$pid"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Stops every process still in PIDS, newest first (a consumer before what it consumes).
cleanup_pids() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ready ADDR SECONDS: until inet:127.0.0.1:PORT or unix:PATH accepts connections.
wait_ready() {
  local addr=$1 limit=$2
  for _ in $(seq 1 $((limit * 10))); do
    if python3 - "$addr" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
a = sys.argv[1]
if a.startswith("unix:"):
    s = socket.socket(socket.AF_UNIX); s.connect(a[5:])
else:
    host, port = a[5:].rsplit(":", 1); s = socket.socket(); s.connect((host, int(port)))
PY
    sleep 0.1
  done
  echo "$SCRIPT: nothing answers on $addr after ${limit}s" >&2
  return 1
}

pf_write() {
  local dir=$1 smtp=$2 sink=$3 line
  shift 3
  rm -rf "$dir"; mkdir -p "$dir"/{etc,queue,data}
  chmod 755 "$dir" "$dir"/{etc,queue}
  chown postfix "$dir/data"
  cat >"$dir/etc/main.cf" <<CF
compatibility_level = 3.6
config_directory = $dir/etc
queue_directory = $dir/queue
data_directory = $dir/data
meta_directory = $(postconf -d -h meta_directory)
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
myhostname = mta.example.com
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$sink
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
milter_protocol = 6
milter_default_action = tempfail
CF
  for line in "$@"; do echo "$line" >>"$dir/etc/main.cf"; done
  cat >"$dir/etc/master.cf" <<CF
127.0.0.1:$smtp inet n - n - - smtpd
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
CF
  # Postfix waits until a just-written main.cf is a few seconds old; backdating skips that.
  touch -d '10 seconds ago' "$dir/etc/main.cf" "$dir/etc/master.cf"
}

pf_start() {
  local dir=$1 smtp=$2 lifetime=$3
  postfix -c "$dir/etc" check
  MAIL_CONFIG="$dir/etc" "$(postconf -d -h daemon_directory)/master" -c "$dir/etc" -s -e "$lifetime" \
    >"$dir/master.out" 2>&1 &
  PF_MASTER_PID=$!
  PIDS+=("$PF_MASTER_PID")
  wait_ready "inet:127.0.0.1:$smtp" 30
}
