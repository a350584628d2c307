//! Entry point of `back-server`; hands off to the library.

use back_server::config::Command;
use back_server::{Application, Config};

/// mimalloc rather than glibc's allocator: lapin's I/O thread frees much of what the runtime's
/// threads allocate, which glibc handles slowly (a quarter of the front-server's CPU per request
/// in paired benchmark runs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Test builds only: fault injection configured by the FAILPOINTS variable.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let config: Config = kv_runtime::parse_with_config_file()?;
    kv_runtime::init_tracing(&config.log);
    if let Some(Command::Reshard(args)) = &config.command {
        return back_server::reshard::run(&config.amqp, args).await;
    }
    let application = Application::build(config).await?;
    application
        .run_until_stopped(kv_runtime::shutdown_signal())
        .await
}
