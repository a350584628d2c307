//! `front-server`: the HTTP face of the key-value store. It validates requests, publishes them to
//! RabbitMQ and answers from the broker's confirm (writes) or the back-server's reply (reads). It
//! keeps no data, so any number of front-servers can run side by side.
//!
//! [`routes`] holds the HTTP API and its input parsing, [`auth`] the API tokens that guard it, [`broker`] the broker client (its session
//! on each RabbitMQ connection, which `kv_runtime`'s supervisor keeps, and the request/reply
//! bookkeeping), [`error`] the mapping of every failure to a JSON answer,
//! [`serve`] the accept loop and its limits against slow or too many clients, and [`startup`]
//! the wiring that `main` and the tests share.

pub mod auth;
pub mod broker;
pub mod config;
pub mod error;
pub mod https;
pub mod routes;
pub mod serve;
pub mod startup;

pub use config::Config;
pub use startup::Application;
