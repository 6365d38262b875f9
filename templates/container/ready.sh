# evi-state's readiness: an authenticated PING, and the loading progress (after acl::ADMIN_CLI).
out=$(cli ping 2>&1) && [ "$out" = PONG ] && { echo PONG; exit 0; }
echo "$out"
case "$out" in
  *LOADING*) cli INFO persistence 2>/dev/null | tr -d '\r' | grep -E '^loading_(loaded_perc|eta_seconds):' ;;
esac
exit 1
