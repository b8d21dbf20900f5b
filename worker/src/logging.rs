//! Logging: `tracing` events to stderr, as text for people or JSON for a log pipeline, filtered
//! by `RUST_LOG` (default `info`). Stdout stays free for `weir run`'s results. Text is coloured
//! only when stderr is a terminal (and `NO_COLOR` is unset): log files and pipes get no ANSI
//! escape codes.

use std::io::IsTerminal;

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
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        tracing::debug!("log subscriber already installed: {e}");
    }
}

/// Whether to colour text logs: only on a terminal, and not when `NO_COLOR` is set to anything
/// non-empty (<https://no-color.org>).
pub fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
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

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(
            !colour(false, None),
            "a file or a pipe gets no escape codes"
        );
        assert!(!colour(true, Some("1".into())));
        assert!(colour(true, Some("".into())), "an empty NO_COLOR is unset");
    }
}
