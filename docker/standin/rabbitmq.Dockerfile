# Stand-in for rabbitmq:3.13-management (docker-compose.yml's broker), for machines where Docker
# Hub does not answer. scripts/check-docker builds it under that exact name, on its
# debian:bookworm-slim, only when the real image cannot be pulled. It is Debian's RabbitMQ
# (3.10), which is what the servers are tested against anyway, with what the compose file
# relies on from the official image:
#   - rabbitmq-diagnostics on PATH, for the healthcheck (check_port_connectivity);
#   - RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS create the broker's user on the first start
#     (rabbitmq-entrypoint);
#   - AMQP on every interface, the management plugin on 15672, logs on stdout, data in
#     /var/lib/rabbitmq.
# Build context: this folder.

FROM debian:bookworm-slim

# Unpinned: the version is the one of the Debian release the base image is.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && printf '[rabbitmq_management].\n' > /etc/rabbitmq/enabled_plugins

COPY rabbitmq-entrypoint /usr/local/bin/rabbitmq-entrypoint

# RABBITMQ_LOGS=-: the node logs to stdout, which `docker logs` shows.
ENV RABBITMQ_LOGS=-
VOLUME ["/var/lib/rabbitmq"]
EXPOSE 4369 5672 15672 25672
ENTRYPOINT ["rabbitmq-entrypoint"]
CMD ["rabbitmq-server"]
