# Stand-in for rabbitmq:3.13-management (docker-compose.yml's broker), for machines where Docker
# Hub does not answer. scripts/check-docker builds it under that exact name, on its
# debian:bookworm-slim, only when the real image cannot be pulled. It is Debian's RabbitMQ
# (3.10), which is what the servers are tested against anyway, with what the compose file
# relies on from the official image:
#   - rabbitmq-diagnostics and rabbitmqctl on PATH, for the healthcheck and the checks;
#   - RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS create the broker's user on the first start,
#     and RABBITMQ_ERLANG_COOKIE sets the Erlang cookie (RabbitMQ reads both itself);
#   - configuration from /etc/rabbitmq/conf.d/, which starts with the official image's
#     10-defaults.conf, so that a file mounted there (docker-compose.cluster.yml's cluster
#     settings) works the same on both;
#   - no Erlang cookie in the image: each node makes its own on its first start, as the official
#     image's do, so a cluster forms only where the compose file gives all nodes the same one;
#   - AMQP on every interface, the management plugin on 15672, logs on stdout, data in
#     /var/lib/rabbitmq.
# Build context: this folder.

FROM debian:bookworm-slim

# Unpinned: the version is the one of the Debian release the base image is. Debian's package
# bakes an Erlang cookie into the image (its postinst makes one): removed, see above. The
# defaults file has what matters of the official image's: guest, where it exists (the compose
# files replace it), may log in from other hosts. Its other line, log.console, is RABBITMQ_LOGS
# below.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && printf '[rabbitmq_management].\n' > /etc/rabbitmq/enabled_plugins \
    && rm -f /var/lib/rabbitmq/.erlang.cookie \
    && mkdir -p /etc/rabbitmq/conf.d \
    && printf 'loopback_users.guest = false\n' > /etc/rabbitmq/conf.d/10-defaults.conf

COPY rabbitmq-entrypoint /usr/local/bin/rabbitmq-entrypoint

# RABBITMQ_LOGS=-: the node logs to stdout, which `docker logs` shows.
ENV RABBITMQ_LOGS=-
VOLUME ["/var/lib/rabbitmq"]
EXPOSE 4369 5672 15672 25672
ENTRYPOINT ["rabbitmq-entrypoint"]
CMD ["rabbitmq-server"]
