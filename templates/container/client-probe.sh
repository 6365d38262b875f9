# The reach probe: run with a client's VALKEY_URL (see src/reach.rs).
set -u
url=${VALKEY_URL:-}
case "$url" in redis://*@*) ;; *) echo "VALKEY_URL is missing or not a redis:// URL with a password"; exit 13 ;; esac
rest=${url#redis://}
cred=${rest%@*}
hostport=${rest##*@}
hostport=${hostport%%/*}
user=${cred%%:*}
pass=${cred#*:}
host=${hostport%%:*}
port=6379
case "$hostport" in *:*) port=${hostport##*:} ;; esac
# Run inside a client whose image has no valkey-cli, the probe cannot work here:
# evi-install then runs it in a container of evi-state's image instead.
if ! command -v valkey-cli >/dev/null 2>&1; then
  echo "valkey-cli is not in this image"
  exit 15
fi
if command -v getent >/dev/null 2>&1 && ! getent ahosts "$host" >/dev/null 2>&1; then
  echo "$host does not resolve"
  exit 10
fi
set -- -h "$host" -p "$port"
if [ -n "$user" ]; then set -- "$@" --user "$user"; fi
out=$(REDISCLI_AUTH="$pass" valkey-cli --no-auth-warning -e -t 2 "$@" ping 2>&1)
echo "$out"
case "$out" in
  PONG)
    # Proof of who it is: the URL's user (none: `default`), as ACL WHOAMI says.
    who=$(REDISCLI_AUTH="$pass" valkey-cli --no-auth-warning -e -t 2 "$@" acl whoami 2>&1)
    [ "$who" = "${user:-default}" ] && exit 0
    echo "authenticates as ${who:-nobody}, not as ${user:-default}"
    exit 14 ;;
  *NOAUTH*|*WRONGPASS*|*"invalid password"*|*"invalid username-password"*) exit 12 ;;
  *"Name or service not known"*|*"name resolution"*|*"No address associated"*) exit 10 ;;
  *) exit 11 ;;
esac
