-- Messages RabbitMQ redelivered, and how many times processing them began: a message that keeps
-- coming back (each try crashed or stopped the back-server) is dead-lettered past a limit.
-- `message` is the AMQP message id, or the body when a sender set none.
CREATE TABLE IF NOT EXISTS redeliveries (
    message  BLOB    PRIMARY KEY,
    attempts INTEGER NOT NULL
) WITHOUT ROWID;
