# status: INFO, key counts, task queues (after acl::ADMIN_CLI; see src/commands/status/health.rs).
cli INFO || exit 1
echo "# evi-keys"
# Keys per namespace: exact up to 100000 keys; above that a full SCAN would make status
# slow, so a random sample of 10000 keys (RANDOMKEY, in one pipeline) is counted and
# scaled to the total, and status says so.
total=$(cli DBSIZE)
count() { awk -v scale="$1" '/^cache:db:/{c++; next} /^op:/{o++; next} /^stream:/{s++; next} /./{x++} END{printf "keys_cache_db:%d\r\nkeys_op:%d\r\nkeys_stream:%d\r\nkeys_other:%d\r\n", c*scale, o*scale, s*scale, x*scale}'; }
if [ "$total" -le 100000 ]; then
  cli --scan | count 1
else
  i=0
  while [ $i -lt 10000 ]; do echo RANDOMKEY; i=$((i + 1)); done | cli | count "$(awk -v t="$total" 'BEGIN{print t / 10000}')"
  printf 'keys_sampled:10000\r\n'
fi
printf 'keys_total:%s\r\n' "$total"
# Each task queue (the first 100): length, consumer groups, pending entries, lag,
# and how long the oldest pending entry has waited (XPENDING's summary form).
cli --scan --pattern 'stream:*' | head -n 100 | while IFS= read -r key; do
  [ "$(cli TYPE "$key")" = stream ] || continue
  printf 'evi_stream:%s\r\nevi_stream_length:%s\r\n' "$key" "$(cli XLEN "$key")"
  [ "$(cli TTL "$key")" -ge 0 ] && printf 'stream_with_ttl:%s\r\n' "$key"
  cli XINFO GROUPS "$key" | awk 'NR % 2 == 1 { k = $0; next } { printf "%s=%s\n", k, $0 }' |
  while IFS= read -r field; do
    case "$field" in
      name=*) group=${field#name=}; printf 'evi_group:%s\r\n' "$group"
        idle=$(cli XPENDING "$key" "$group" - + 1 | sed -n 3p)
        printf 'evi_group_oldest_idle_ms:%s\r\n' "${idle:-}" ;;
      consumers=*|pending=*|lag=*) printf 'evi_group_%s:%s\r\n' "${field%%=*}" "${field#*=}" ;;
    esac
  done
done
