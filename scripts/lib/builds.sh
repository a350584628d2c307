# What the scripts that measure one build of the servers against another share (sourced by
# count-instructions and time-builds, after common.sh): a system of a build's back-server and
# front-server on a queue and a database of their own, its load from wrk, and the cleanup of
# every process and queue they made.
# shellcheck shell=bash
# shellcheck disable=SC2034 # port, front_pid and requests are for the scripts that source this

build_work="$(mktemp -d)"
build_queues=()
build_pids=()
builds_cleanup() {
    kill -TERM "${build_pids[@]}" 2>/dev/null || true
    wait "${build_pids[@]}" 2>/dev/null || true
    if command -v rabbitmqctl >/dev/null 2>&1; then
        for queue in "${build_queues[@]}"; do
            rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
            rabbitmqctl -q delete_queue "$queue.dead" >/dev/null 2>&1 || true
        done
    elif [ "${#build_queues[@]}" -gt 0 ]; then
        say "rabbitmqctl is not here: delete these queues and their .dead queues: ${build_queues[*]}"
    fi
    rm -rf "$build_work"
}
trap builds_cleanup EXIT

# Dies unless each directory holds a front-server and a back-server.
check_build_dirs() { # dirs...
    local dir
    for dir in "$@"; do
        if [ ! -x "$dir/front-server" ] || [ ! -x "$dir/back-server" ]; then
            die "$dir has no front-server and back-server"
        fi
    done
}

# Starts a build's back-server and front-server, the front under the command given after the
# name if any (valgrind, say), and waits until the front is ready; with route get, stores the
# keys k1..k100 that get.lua reads. Sets `port`, `front_pid` and `back_pid`.
start_build() { # dir, name (unique to the run), route, wrapper command...
    local dir="$1" name="$2" route="$3" queue="kv.$2.$$"
    shift 3
    build_queues+=("$queue")
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    KV_QUEUE="$queue" RUST_LOG=warn DB_PATH="$build_work/$name.db" ADMIN_LISTEN=127.0.0.1:0 \
        "$dir/back-server" 2>"$build_work/$name-back.log" &
    back_pid=$!
    build_pids+=("$back_pid")
    KV_QUEUE="$queue" RUST_LOG=warn FRONT_LISTEN="127.0.0.1:$port" "$@" "$dir/front-server" \
        2>"$build_work/$name-front.log" &
    front_pid=$!
    build_pids+=("$front_pid")
    local tries=0
    until curl -fs "http://127.0.0.1:$port/ready" >/dev/null; do
        tries=$((tries + 1))
        [ "$tries" -lt 600 ] || die "$dir/front-server did not get ready in a minute: $(tail -3 "$build_work/$name-front.log")"
        sleep 0.1
    done
    if [ "$route" = get ]; then
        local n
        for n in $(seq 1 100); do
            curl -fs -X POST -H 'Content-Type: application/json' -d "{\"k$n\": $n}" \
                "http://127.0.0.1:$port/api" >/dev/null || die "could not store the keys to read"
        done
    fi
}

# Stops a build's front-server and back-server.
stop_build() { # front pid, back pid
    local stopping=("$1" "$2") pid left=()
    kill -TERM "${stopping[@]}"
    wait "${stopping[@]}" || true
    for pid in "${build_pids[@]}"; do
        [ "$pid" = "${stopping[0]}" ] || [ "$pid" = "${stopping[1]}" ] || left+=("$pid")
    done
    build_pids=("${left[@]}")
}

# Loads a front-server with wrk for a route: GET /api (keys k1..k100), POST /api (new keys under
# the prefix), or /health. Dies on any error or answer other than 2xx; sets `requests`.
load_build() { # port, route, seconds, threads, connections, key prefix for post
    local script=crates/bench/lua/get.lua args=(-- k 1 100) summary bad errors
    case "$2" in
        post) script=crates/bench/lua/post.lua args=(-- "$6") ;;
        health) script=crates/bench/lua/bare.lua args=() ;;
    esac
    summary="$(wrk -t"$4" -c"$5" -d"$3s" -s "$script" "http://127.0.0.1:$1" "${args[@]}" | grep '^KV-SUMMARY')"
    # KV-SUMMARY duration requests p50 p99 non-2xx errors
    read -r _ _ requests _ _ bad errors <<<"$summary"
    if [ "$bad" -ne 0 ] || [ "$errors" -ne 0 ]; then
        die "$bad non-2xx answers and $errors errors on :$1"
    fi
}
