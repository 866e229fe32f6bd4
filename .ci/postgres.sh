#!/usr/bin/env bash
# A throw-away PostgreSQL server for the multi-worker sweep test: `source .ci/postgres.sh` installs the
# Debian package if it is missing, starts a server on a private socket directory and port, creates a
# database, exports SEMCKD_TEST_PG_URL and stops (and deletes) the server when the calling shell exits.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pg_bin" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
"${PYTHON:-python3}" -c "import psycopg" 2>/dev/null || "${PYTHON:-python3}" -m pip install -q "psycopg[binary]>=3.1,<4"
pg_dir=$(mktemp -d /tmp/semckd-pg.XXXXXX)
pg_port=${SEMCKD_PG_PORT:-55432}
_semckd_pg_stop() {
    [ -f "$pg_dir/data/postmaster.pid" ] && "${pg_as[@]}" "$pg_bin/pg_ctl" -s -D "$pg_dir/data" -m fast -w stop
    rm -rf "$pg_dir"
}
trap _semckd_pg_stop EXIT
if [ "$(id -u)" = 0 ]; then pg_as=(runuser -u postgres --); chown postgres "$pg_dir"; else pg_as=(); fi
"${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U semckd --auth=trust >/dev/null
"${pg_as[@]}" "$pg_bin/pg_ctl" -s -D "$pg_dir/data" -l "$pg_dir/log" -w \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1" start
"${pg_as[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U semckd semckd_test
export SEMCKD_TEST_PG_URL="postgresql://semckd@127.0.0.1:$pg_port/semckd_test"
echo "ci: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') at $SEMCKD_TEST_PG_URL"
