# CONFIG SET KEY VALUE ..., then each key as the server reports it (after acl::ADMIN_CLI).
set -e
out=$(cli CONFIG SET "$@" 2>&1) || { echo "evi-refused: $out"; exit 3; }
while [ "$#" -gt 0 ]; do
  printf 'evi-config %s %s\n' "$1" "$(cli CONFIG GET "$1" | sed -n 2p)"
  shift 2
done
