# evi-state's start script (run by `sh -c` as root, with the image's entrypoint cleared).
#
# Valkey reads its users from an ACL file on the data volume (`aclfile` in
# valkey.conf), so passwords that `rotate-secret` adds or revokes at run time
# (`ACL SETUSER`, then `ACL SAVE`) survive any restart of the server. The file
# holds SHA-256 hashes only, in a directory only the server's user can read.
#
# This script keeps that file right before the server starts:
# - `default`, the clients' user (the seed guide's `redis://:PW@evi-state:6379`):
#   its password hashes are kept as the file has them; only on the first start
#   (no file, or no such user in it) is the hash taken from the mounted secret
#   /run/secrets/evi-state-password. Its rules: EVI_CLIENT_RULES when set (on
#   Kubernetes, at every start); else the file's, which `up` sets in place
#   (`ACL SETUSER`, `ACL SAVE`); on a first start EVI_DEFAULT_USER_RULES.
# - `evi-admin`, evi-install's own user: its hash is always taken from the
#   mounted /run/secrets/evi-admin-password, which only evi-state mounts.
#
# Passwords are read with the `read` built-in and hashed through a pipe from the
# `printf` built-in, so no password is ever in a process's arguments. It fails
# closed (exit 78, which `up` reports) on a missing, empty or malformed secret.
set -eu
acl_dir=/data/acl
acl=$acl_dir/users.acl

die() {
  echo "evi-state: $*" >&2
  exit 78
}

# Prints the SHA-256 of the password in the file $1, as Valkey's `#<hash>` form wants it.
hash_of() {
  [ -r "$1" ] || die "password secret $1 is missing or unreadable; refusing to start without a password"
  pw=
  IFS= read -r pw < "$1" || true
  case "$pw" in
    ""|*[!A-Za-z0-9]*) die "password secret $1 is empty or malformed; refusing to start without a password" ;;
  esac
  h=$(printf '%s' "$pw" | sha256sum)
  pw=
  printf '%s' "${h%% *}"
}

[ -n "${EVI_CLIENT_RULES:-}${EVI_DEFAULT_USER_RULES:-}" ] ||
  die "neither EVI_CLIENT_RULES nor EVI_DEFAULT_USER_RULES is set; refusing to start with no rules for the clients"
admin_hash=$(hash_of /run/secrets/evi-admin-password)

# The hashes and rules `default` has now: those of the file, or the mounted
# secret's and the first start's rules.
default_hashes=
default_rules=
if [ -f "$acl" ]; then
  # Split the line into words without expanding the key patterns (`~cache:*`) as globs.
  set -f
  for word in $(sed -n 's/^user default //p' "$acl"); do
    case "$word" in
      \#*) default_hashes="$default_hashes $word" ;;
      on|off) ;;
      *) default_rules="$default_rules $word" ;;
    esac
  done
  set +f
fi
if [ -z "$default_hashes" ]; then
  default_hashes=" #$(hash_of /run/secrets/evi-state-password)"
  default_rules=
fi
if [ -n "${EVI_CLIENT_RULES:-}" ]; then
  default_rules=" $EVI_CLIENT_RULES"
elif [ -z "$default_rules" ]; then
  default_rules=" $EVI_DEFAULT_USER_RULES"
fi

set --
if [ "$(id -u)" = 0 ]; then
  # Never run Valkey as root: drop to the image's valkey user, or refuse.
  if ! id valkey >/dev/null 2>&1 || ! command -v setpriv >/dev/null 2>&1; then
    die "the image has no valkey user or no setpriv to drop privileges to it; refusing to run Valkey as root"
  fi
  # As the official image's entrypoint does: /data belongs to the server's user, also on
  # a volume that root created or restored.
  if command -v find >/dev/null 2>&1; then
    find /data \! -user valkey -exec chown valkey:valkey '{}' +
  else
    chown -R valkey:valkey /data
  fi
  set -- setpriv --reuid=valkey --regid=valkey --clear-groups --
fi
mkdir -p "$acl_dir"
chmod 700 "$acl_dir"

umask 077
{
  if [ -f "$acl" ]; then
    grep -v -e '^user default ' -e '^user evi-admin ' "$acl" || true
  fi
  echo "user default on$default_hashes$default_rules"
  echo "user evi-admin on #$admin_hash ~* &* +@all"
} > "$acl.tmp"
mv "$acl.tmp" "$acl"
if [ "$#" -gt 0 ]; then
  chown -R valkey:valkey "$acl_dir"
fi

exec "$@" valkey-server /usr/local/etc/valkey/valkey.conf
