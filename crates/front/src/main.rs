//! Entry point of `front-server`; hands off to the library.

use front_server::{Application, Config};

/// mimalloc rather than glibc's allocator: lapin's I/O thread frees much of what the runtime's
/// threads allocate, which glibc handles slowly (a quarter of the front-server's CPU per request
/// in paired benchmark runs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = kv_runtime::parse_with_config_file()?;
    kv_runtime::init_tracing(&config.log);
    let application = Application::build(config).await?;
    application
        .run_until_stopped(kv_runtime::shutdown_signal())
        .await
}
