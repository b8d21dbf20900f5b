//! Logging: `tracing` events to stderr, as text for people or JSON for a log pipeline, filtered
//! by `RUST_LOG` (default `info`). Stdout stays free for `weir run`'s results.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line per event.
    Json,
}

/// Install the process's log subscriber. Call once, early in `main`; a second call keeps the
/// first subscriber.
pub fn init(format: LogFormat) {
    // Invalid RUST_LOG directives are skipped rather than failing the start.
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        tracing::debug!("log subscriber already installed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_init_keeps_the_first_subscriber_instead_of_panicking() {
        init(LogFormat::Json);
        init(LogFormat::Text);
        tracing::info!(partition = 0, "logging works after two inits");
    }
}
