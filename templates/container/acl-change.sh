# The rotation helper's one action on evi-state's users (run by `podman exec` in
# evi-rotate, which shares evi-state's network namespace and mounts the admin
# secret and the passwords of the two generations a rotation moves between).
#
#   acl-change.sh add  FILE   the password in FILE is accepted too (`ACL SETUSER default #hash`)
#   acl-change.sh only FILE   the password in FILE is the only one (`resetpass #hash`)
#
# Either way the change is saved to the ACL file (`ACL SAVE`: Valkey writes a
# temporary file and renames it) before this reports success, so a restart of
# evi-state at any later moment keeps it. Both actions can be repeated.
# Passwords travel only through built-ins and pipes: none is in an argument.
set -eu
action=$1
file=$2

fail() {
  echo "evi-acl: $*" >&2
  exit 1
}

[ -r /run/secrets/evi-admin-password ] || fail "the admin secret is not mounted"
[ -r "$file" ] || fail "$file is not mounted"
pw=
IFS= read -r pw < "$file" || true
case "$pw" in
  ""|*[!A-Za-z0-9]*) fail "$file is empty or malformed" ;;
esac
h=$(printf '%s' "$pw" | sha256sum)
h=${h%% *}
case "$action" in
  add) change="#$h" ;;
  only) change="resetpass #$h" ;;
  *) fail "unknown action $action" ;;
esac
REDISCLI_AUTH=$(cat /run/secrets/evi-admin-password)
export REDISCLI_AUTH
# valkey-cli reads the commands from stdin: the hash is in no argument either.
out=$(printf 'ACL SETUSER default %s\nACL SAVE\n' "$change" |
  valkey-cli --no-auth-warning --user evi-admin -h 127.0.0.1 -e 2>&1) || fail "$(echo "$out" | tr '\n' ' ')"
[ "$(echo "$out" | tr -d '\r')" = "$(printf 'OK\nOK')" ] || fail "unexpected answer: $(echo "$out" | tr '\n' ' ')"
# Proof from a client's side: the password now in force authenticates.
REDISCLI_AUTH=$pw
out=$(valkey-cli --no-auth-warning -h 127.0.0.1 -e ping 2>&1) || fail "the password does not authenticate: $out"
[ "$out" = PONG ] || fail "the password does not authenticate: $out"
echo evi-acl-ok
