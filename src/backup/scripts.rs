//! The shell and Lua that run inside containers: the data summary, the
//! throwaway servers of `backup` and `backup --verify`, and the restore
//! helper that swaps the data in evi-state's volume. No password passes
//! through any of them except the live summary's, which reads it from the
//! mounted secret into valkey-cli's environment.

/// One SCAN batch (ARGV[1] the cursor, ARGV[2] the count), summarised in
/// one of two passes (ARGV[3]):
/// - `keys`: the next cursor, then `n NS KEYS WITH_TTL FIRST_EXPIRY` per
///   namespace: one `PEXPIRETIME` per key, nothing else;
/// - `stream`: `SCAN … TYPE stream` (the filter runs in the server, so a
///   batch costs milliseconds however many other keys there are), then for
///   each stream an `s` line and per group a `g` line (names hex-encoded).
///
/// The live evi-state only ever gets the `stream` pass, in batches of 10,000.
pub const SUMMARY_LUA: &str = r#"
local streams = ARGV[3] == 'stream'
local r
if streams then
  r = redis.call('SCAN', ARGV[1], 'COUNT', tonumber(ARGV[2]), 'TYPE', 'stream')
else
  r = redis.call('SCAN', ARGV[1], 'COUNT', tonumber(ARGV[2]))
end
local out = {r[1]}
local ns = {}
local function hex(s) return (s:gsub('.', function(c) return string.format('%02x', c:byte()) end)) end
local function num(x) return string.format('%.0f', x) end
for _, k in ipairs(r[2]) do
  if not streams then
    local n = 'other'
    if k:sub(1, 9) == 'cache:db:' then n = 'cache:db:'
    elseif k:sub(1, 3) == 'op:' then n = 'op:'
    elseif k:sub(1, 7) == 'stream:' then n = 'stream:' end
    local a = ns[n] or {0, 0, -1}
    local e = redis.call('PEXPIRETIME', k)
    if e ~= -2 then
      a[1] = a[1] + 1
      if e >= 0 then
        a[2] = a[2] + 1
        if a[3] < 0 or e < a[3] then a[3] = e end
      end
      ns[n] = a
    end
  else
    local info = redis.call('XINFO', 'STREAM', k)
    local f = {}
    for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
    out[#out + 1] = 's ' .. hex(k) .. ' ' .. num(f['length']) .. ' ' .. f['last-generated-id'] .. ' ' .. num(f['entries-added'] or 0)
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', k)) do
      local gf = {}
      for i = 1, #g, 2 do gf[g[i]] = g[i + 1] end
      local buf = {}
      if gf['pending'] > 0 then
        for _, p in ipairs(redis.call('XPENDING', k, gf['name'], '-', '+', gf['pending'])) do
          buf[#buf + 1] = p[1] .. ' ' .. p[2] .. ' ' .. num(p[4])
        end
      end
      out[#out + 1] = 'g ' .. hex(k) .. ' ' .. hex(gf['name']) .. ' ' .. num(gf['consumers']) .. ' ' .. num(gf['pending']) .. ' ' .. gf['last-delivered-id'] .. ' ' .. redis.sha1hex(table.concat(buf, '\n'))
    end
  end
end
for n, a in pairs(ns) do out[#out + 1] = 'n ' .. n .. ' ' .. num(a[1]) .. ' ' .. num(a[2]) .. ' ' .. num(a[3]) end
return out
"#;

/// Shell functions: `summary` prints the whole summary with the `cli`
/// function the caller defines, one batch at a time, namespaces added up.
const SUMMARY_SH: &str = r#"
summary() {
  cursor=0
  while :; do
    out=$(cli EVAL "$SUMMARY_LUA" 0 "$cursor" "$EVI_BATCH" "$EVI_PASS") || { echo "evi-error: summary failed: $out"; return 1; }
    cursor=$(printf '%s\n' "$out" | head -n 1)
    printf '%s\n' "$out" | sed 1d
    [ "$cursor" = 0 ] && break
  done | awk '$1 == "n" { k[$2] += $3; t[$2] += $4; if (!($2 in e)) e[$2] = -1
                            if ($5 >= 0 && (e[$2] < 0 || $5 < e[$2])) e[$2] = $5; next }
              { print "evi-summary " $0 }
              END { for (n in k) printf "evi-summary n %s %.0f %.0f %.0f\n", n, k[n], t[n], e[n] }'
}
wait_loaded() {
  i=0
  while [ "$(cli PING 2>/dev/null)" != PONG ]; do
    i=$((i + 1)); [ "$i" -gt 72000 ] && { echo "evi-error: the server did not load the data"; return 1; }
    sleep 0.05
  done
}
stop_server() {
  cli SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  while [ -e /tmp/evi-valkey.pid ] && kill -0 "$(cat /tmp/evi-valkey.pid)" 2>/dev/null; do sleep 0.05; done
}
# A throwaway server serves no one: its summary runs in batches of 200,000 keys.
# `isolated` is the manifest's whole summary; `isolated totals` replaces the
# pass over every key by the key counts of INFO keyspace.
isolated() {
  printf 'evi-version %s\n' "$(cli INFO server | sed -n 's/^valkey_version:\([^\r]*\).*/\1/p')"
  if [ "${1:-}" = totals ]; then
    cli INFO keyspace | tr -d '\r' | sed -n 's/^db0:/evi-keyspace /p'
  else
    EVI_BATCH=200000 EVI_PASS=keys summary || return 1
  fi
  EVI_BATCH=200000 EVI_PASS=stream summary || return 1
}
"#;

/// What `restore` reads from the live evi-state, authenticated from its
/// secret: its streams and groups (`SCAN … TYPE stream`), and its key counts
/// from `INFO keyspace` (`evi-keyspace keys=N,expires=M,…`). Never a pass over
/// every key: clients are using it.
pub fn live_streams_script() -> String {
    format!(
        "{}\n\
         SUMMARY_LUA=$(cat <<'EVI_LUA'\n{SUMMARY_LUA}\nEVI_LUA\n)\n{SUMMARY_SH}\n\
         EVI_BATCH=10000 EVI_PASS=stream summary || exit 1\n\
         cli INFO keyspace | tr -d '\\r' | sed -n 's/^db0:/evi-keyspace /p'\n",
        crate::acl::ADMIN_CLI
    )
}

/// A throwaway server's options: no port (a unix socket only), daemonized so
/// the script can talk to it.
const THROWAWAY_OPTS: &str = "--port 0 --unixsocket /tmp/evi-valkey.sock --unixsocketperm 700 \
    --daemonize yes --pidfile /tmp/evi-valkey.pid --logfile /tmp/evi-valkey.log";

fn with_functions(body: &str) -> String {
    format!(
        "set -u\ncli() {{ valkey-cli -s /tmp/evi-valkey.sock \"$@\"; }}\n\
         SUMMARY_LUA=$(cat <<'EVI_LUA'\n{SUMMARY_LUA}\nEVI_LUA\n)\n{SUMMARY_SH}\n\
         fail() {{ echo \"evi-error: $*\"; tail -n 5 /tmp/evi-valkey.log 2>/dev/null | sed 's/^/evi-error: /'; exit 1; }}\n{body}"
    )
}

/// `backup`'s throwaway: loads the snapshot evi-state just saved, read
/// through the volume (mounted at /snapshot) under the second name the
/// backup gave it, and prints the summary of exactly that data. The file's
/// sha256 is computed while it loads (the file stays in the page cache for
/// the copy into the archive that follows). Argument: the snapshot's name in
/// the volume.
///
/// The snapshot is archived as it is, as the base of an AOF directory: a
/// server with `appendonly yes` loads an RDB base (multi-part AOF, Valkey
/// 7+; <https://valkey.io/topics/persistence/>), so no AOF rewrite is needed.
pub fn backup_job() -> String {
    with_functions(&format!(
        r#"name=$1; snap=/snapshot/$1
[ -f "$snap" ] || fail "the snapshot $name is not in the volume"
mkdir -p /work && ln -s "$snap" /work/dump.rdb || fail "cannot prepare /work"
# Below evi-state's CPU priority: on a small host the load would otherwise
# delay evi-state's clients by tens of milliseconds.
low=; command -v nice >/dev/null && low="nice -n 10"
$low sha256sum < "$snap" > /tmp/evi-sha256 &
$low valkey-server --dir /work --dbfilename dump.rdb --appendonly no --save '' {THROWAWAY_OPTS} ||
  fail "valkey-server did not start"
wait_loaded || fail "the snapshot did not load"
isolated || fail "cannot summarise the data"
stop_server
wait $! || fail "cannot read the snapshot"
printf 'evi-file %s %s %s\n' "$(cut -d ' ' -f 1 /tmp/evi-sha256)" "$(stat -c %s "$snap")" "$name"
echo evi-done
"#
    ))
}

/// The second name `backup` gives evi-state's snapshot in the volume while it
/// reads it (a hard link: evi-state's own save points replace `dump.rdb` by a
/// rename, never the file under this name). Names left by an interrupted
/// backup are removed first; backups hold the host lock, so none is in use.
/// Arguments: the snapshot's file name (`dbfilename`), the second name.
/// Prints the file's size.
pub const LINK_SNAPSHOT: &str = r#"set -eu
cd /data
rm -f .evi-backup-*.rdb
ln "$1" "$2"
stat -c %s "$2"
"#;

/// Removes the second names of the snapshot (after the backup, whatever happened).
pub const UNLINK_SNAPSHOT: &str = "rm -f /data/.evi-backup-*.rdb\n";

/// Written next to the unpacked data when all of it is there and checked
/// (`backup --verify`), or when unpacking failed: its throwaway starts while
/// the data is unpacked, and waits for one of them.
pub const UNPACKED_MARKER: &str = ".evi-unpacked";
pub const ABORT_MARKER: &str = ".evi-abort";

/// `backup --verify`'s throwaway: once the archive's AOF directory is
/// unpacked to /work/data (a marker says so), loads it with `appendonly
/// yes`, as evi-state would, and prints the summary. Arguments: the AOF
/// directory name, the AOF file name.
pub fn verify_job() -> String {
    with_functions(&format!(
        r#"aofdir=$1; aoffile=$2
i=0
until [ -e /work/data/{UNPACKED_MARKER} ]; do
  [ -e /work/data/{ABORT_MARKER} ] && fail "the archive could not be unpacked"
  i=$((i + 1)); [ "$i" -gt 180000 ] && fail "the archive was not unpacked within an hour"
  sleep 0.02
done
valkey-server --dir /work/data --appendonly yes --appenddirname "$aofdir" --appendfilename "$aoffile" \
  --save '' {THROWAWAY_OPTS} || fail "valkey-server did not start"
wait_loaded || fail "the archive did not load"
isolated totals || fail "cannot summarise the data"
stop_server
echo evi-done
"#
    ))
}

/// `restore`'s check: evi-state's image, valkey.conf, volume and user, on no
/// network and with no password, loads the staged files (argument: their
/// directory, in place of valkey.conf's `dir`) as evi-state will load them
/// once swapped in, and prints the summary.
pub fn check_job(conf: &str) -> String {
    with_functions(&format!(
        r#"dir=$1
set --
if [ "$(id -u)" = 0 ] && id valkey >/dev/null 2>&1 && command -v setpriv >/dev/null; then
  set -- setpriv --reuid=valkey --regid=valkey --clear-groups --
fi
# No ACL file: the throwaway answers on its private socket only, with no password,
# and never reads or writes evi-state's users (`aclfile` in the config names theirs).
"$@" valkey-server {conf} --dir "$dir" --aclfile '' {THROWAWAY_OPTS} || fail "valkey-server did not start"
wait_loaded || fail "the restored data did not load"
cli INFO persistence | tr -d '\r' | grep '^aof_enabled:' | sed 's/^/evi-/'
isolated totals || fail "cannot summarise the data"
stop_server
echo evi-done
"#
    ))
}

/// The restore helper, run as root in a container that mounts evi-state's
/// volume at /data. One action per run; each can be run again after an
/// interruption. Everything it keeps is under /data/.evi-restore:
/// - `partial/`: the archive's files as they arrive (evi-install checks each
///   against its sha256 as it sends it); `stage` gives them to the server's
///   user and renames the directory to `incoming/` (with `new.list`, the
///   entries it holds);
/// - `swap` moves each live entry (the AOF directory, dump.rdb) into
///   `rollback/` and the new one into /data, one rename each;
/// - `rollback` undoes a swap, complete or not; `discard` and `finish`
///   delete the directory.
///
/// Valkey reads only its AOF directory (or, with `appendonly no`, dump.rdb),
/// so between the renames of one entry no server is running on the volume:
/// evi-state is stopped for the swap.
/// Arguments: the action, the AOF directory name, the AOF file name, and for
/// `stage` whether to write dump.rdb from the AOF base (`rdb` or `no-rdb`).
pub const HELPER: &str = r#"set -eu
action=$1; aofdir=$2; aoffile=$3
R=/data/.evi-restore
entries="$aofdir dump.rdb"
say() { echo "evi-helper: $*"; }
case "$action" in
  discard|finish)
    rm -rf "$R" ;;
  stage)
    rm -rf "$R/incoming" "$R/new.list"
    cd "$R/partial"
    if [ "$4" = rdb ]; then
      base=$(awk '$6 == "b" { print $2 }' "$aofdir/$aoffile.manifest")
      [ -n "$base" ] && cp "$aofdir/$base" dump.rdb.tmp && mv dump.rdb.tmp dump.rdb
    fi
    if id valkey >/dev/null 2>&1; then owner="$(id -u valkey):$(id -g valkey)"; else owner=$(stat -c %u:%g /data); fi
    chown -R "$owner" .
    ls -A > ../new.list.tmp && mv ../new.list.tmp ../new.list
    sync
    cd / && mv "$R/partial" "$R/incoming"
    sync ;;
  swap)
    [ -d "$R/incoming" ] && [ -f "$R/new.list" ] || { say "nothing staged"; exit 3; }
    if [ ! -f "$R/old.list" ]; then
      mkdir -p "$R/rollback"
      : > "$R/old.list.tmp"
      for f in $entries; do if [ -e "/data/$f" ]; then echo "$f" >> "$R/old.list.tmp"; fi; done
      mv "$R/old.list.tmp" "$R/old.list"
    fi
    for f in $entries; do
      if [ -e "$R/incoming/$f" ] || ! grep -qx "$f" "$R/new.list"; then
        if grep -qx "$f" "$R/old.list" && [ -e "/data/$f" ] && [ ! -e "$R/rollback/$f" ]; then
          mv "/data/$f" "$R/rollback/$f"
        fi
      fi
      if [ -e "$R/incoming/$f" ]; then mv "$R/incoming/$f" "/data/$f"; fi
    done
    sync ;;
  rollback)
    if [ -f "$R/old.list" ]; then
      mkdir -p "$R/discarded"
      for f in $entries; do
        if grep -qx "$f" "$R/new.list" && [ ! -e "$R/incoming/$f" ] && [ -e "/data/$f" ]; then
          mv "/data/$f" "$R/discarded/$f"
        fi
        if [ -e "$R/rollback/$f" ]; then mv "$R/rollback/$f" "/data/$f"; fi
      done
      sync
      say "rolled back"
    fi
    rm -rf "$R" ;;
  *) say "unknown action $action"; exit 2 ;;
esac
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script is valid POSIX shell (`sh -n`).
    #[test]
    fn the_scripts_parse() {
        for (name, script) in [
            ("live", live_streams_script()),
            ("backup", backup_job()),
            ("verify", verify_job()),
            ("check", check_job("/etc/valkey.conf")),
            ("helper", HELPER.to_string()),
            ("link", LINK_SNAPSHOT.to_string()),
            ("unlink", UNLINK_SNAPSHOT.to_string()),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn no_script_puts_a_password_in_an_argument() {
        assert!(live_streams_script()
            .contains("REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\""));
        for s in [
            backup_job(),
            verify_job(),
            check_job("/c"),
            HELPER.to_string(),
        ] {
            assert!(!s.contains("secrets"), "{s}");
        }
    }
}
