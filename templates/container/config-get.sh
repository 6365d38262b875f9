# Each key given, as the server reports it (after acl::ADMIN_CLI).
for key in "$@"; do
  printf 'evi-config %s %s\n' "$key" "$(cli CONFIG GET "$key" | sed -n 2p)"
done
