//! End-to-end tests: the real front-server and back-server, in process, talking through the real
//! RabbitMQ at `AMQP_URL` (default: the local broker), each test on its own queue and database.

mod auth;
mod back_down;
mod batches;
mod browser;
mod cli;
mod consistency;
mod dead_letter;
mod errors;
mod faults;
mod group_commit;
mod health;
mod hostile;
mod in_flight;
mod late_reply;
mod least_privilege;
mod logs;
mod metrics;
mod openapi;
mod proxy;
mod read_write;
mod scale_out;
