//! The benchmark of the key-value system (`kv-bench`, run by `scripts/bench`) and the probe of
//! RabbitMQ's own limits it measures the system against (`limits-probe`).

pub mod check;
pub mod load;
pub mod probe;
pub mod system;
