# Shared by scripts/run, scripts/test and scripts/bench: make sure the tools and the broker they need are there,
# installing or starting them where we can, and saying exactly what is missing where we cannot.
# shellcheck shell=bash

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

apt_install() {
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is missing. Install Rust (1.89 or newer) from https://rustup.rs:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
then open a new shell and run this again."
    if ! command -v cc >/dev/null 2>&1; then
        # The bundled SQLite is C; rusqlite compiles it.
        if is_root && command -v apt-get >/dev/null 2>&1; then
            apt_install build-essential
        else
            die "a C compiler is missing (SQLite is built from source). Install it with:
    sudo apt-get install -y build-essential"
        fi
    fi
}

# The benchmark's load generator, from Debian's package.
# A command from Debian's package of the same purpose, installed when run as root.
ensure_apt_tool() { # command, Debian package
    command -v "$1" >/dev/null 2>&1 && return
    if is_root && command -v apt-get >/dev/null 2>&1; then
        apt_install "$2"
    else
        die "$1 is missing. Install it with:
    sudo apt-get install -y $2"
    fi
}

ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return
    if is_root && command -v apt-get >/dev/null 2>&1; then
        apt_install wrk
    elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        say "installing wrk with sudo apt-get"
        sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        die "wrk (the load generator) is missing. Install it with:
    sudo apt-get install -y wrk"
    fi
}

# Headless Chromium and its WebDriver, for the test that uses /docs in a real browser. Debian's
# packages; recommended packages left out, as a headless browser needs none of them.
ensure_chromium() {
    [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1 && return
    if is_root && command -v apt-get >/dev/null 2>&1; then
        say "installing chromium chromium-driver with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null
    else
        say "chromium or chromedriver is missing, so the browser test will fail. Install them with:
    sudo apt-get install -y --no-install-recommends chromium chromium-driver"
    fi
}

# Host and port of AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).
amqp_endpoint() {
    local url="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
    local rest="${url#*://}"
    rest="${rest#*@}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    AMQP_HOST="${rest%%:*}"
    AMQP_PORT=5672
    [[ "$rest" == *:* ]] && AMQP_PORT="${rest##*:}"
    [ -n "$AMQP_HOST" ] || AMQP_HOST=127.0.0.1
}

broker_answers() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$AMQP_HOST/$AMQP_PORT" 2>/dev/null
}

wait_for_broker() {
    local waited=0
    until broker_answers; do
        [ "$waited" -ge 90 ] && die "RabbitMQ did not start listening on $AMQP_HOST:$AMQP_PORT within 90 s; see its log under /var/log/rabbitmq/"
        sleep 1
        waited=$((waited + 1))
    done
}

# Debian installs it in /usr/sbin, which a normal user's PATH often lacks.
rabbitmq_server_bin() {
    command -v rabbitmq-server 2>/dev/null || { [ -x /usr/sbin/rabbitmq-server ] && echo /usr/sbin/rabbitmq-server; }
}

start_rabbitmq() {
    local bin
    bin="$(rabbitmq_server_bin)"
    say "starting RabbitMQ ($bin -detached)"
    if is_root || [ "$(id -un)" = rabbitmq ]; then
        "$bin" -detached >/dev/null 2>&1 || true
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$bin" -detached >/dev/null 2>&1 || true
    else
        die "RabbitMQ is installed but not running, and starting it needs root: sudo rabbitmq-server -detached"
    fi
    wait_for_broker
}

# Reuses a broker already answering at AMQP_URL; else starts an installed local rabbitmq-server;
# else installs it with apt-get when root; else says what to install.
ensure_rabbitmq() {
    amqp_endpoint
    if broker_answers; then
        say "RabbitMQ answers at $AMQP_HOST:$AMQP_PORT"
        return
    fi
    case "$AMQP_HOST" in
        127.0.0.1 | localhost | ::1 | "[::1]") ;;
        *) die "AMQP_URL points at $AMQP_HOST:$AMQP_PORT, which does not answer. Start that broker, or unset AMQP_URL to use a local one." ;;
    esac
    if [ -z "$(rabbitmq_server_bin)" ]; then
        if is_root && command -v apt-get >/dev/null 2>&1; then
            apt_install rabbitmq-server
            # The package may have started it already (systemd); if so we are done.
            if broker_answers; then
                say "RabbitMQ answers at $AMQP_HOST:$AMQP_PORT"
                return
            fi
        else
            die "RabbitMQ is not installed and nothing answers at $AMQP_HOST:$AMQP_PORT. Install it with:
    sudo apt-get install -y rabbitmq-server
or point AMQP_URL at a running broker."
        fi
    fi
    start_rabbitmq
    say "RabbitMQ answers at $AMQP_HOST:$AMQP_PORT"
}
