//! Where espd's log lines go: plain text or JSON lines on stderr through tracing-appender's
//! non-blocking writer (a background thread does the writing; when its buffer is full the
//! thread that logs waits rather than losing the line), or straight to the systemd journal
//! (tracing-journald). The `ESPD_LOG` filter (default `info`) picks what is logged in every
//! format, except that the audit log (target `espd::audit`) is always on at `info`.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format plain|json|journald` (or `ESPD_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr (colours only on a terminal).
    #[default]
    Plain,
    /// One JSON object per line on stderr (timestamp, level, target, fields).
    Json,
    /// Native journal entries (priority, fields) through /run/systemd/journal/socket.
    Journald,
}

/// Keeps the non-blocking writer's thread alive. Dropping it (or [`Logging::finish`]) flushes
/// every line logged so far; keep it for the whole process.
pub struct Logging {
    guard: Option<WorkerGuard>,
    dropped: Option<ErrorCounter>,
}

impl Logging {
    /// Flushes the buffered lines and says on stderr how many were dropped because the buffer
    /// was full (none unless something logged faster than stderr could take it).
    pub fn finish(mut self) {
        drop(self.guard.take());
        if let Some(n) = self.dropped.take().map(|c| c.dropped_lines())
            && n > 0
        {
            eprintln!("espd: {n} log lines dropped (log buffer full)");
        }
    }
}

/// The audit log's target: always logged at `info`, whatever `ESPD_LOG` says.
pub const AUDIT_TARGET: &str = "espd::audit";

/// The `ESPD_LOG` filter, `info` when unset. A value that does not parse is an error rather than
/// a silent fall-back to `info`.
fn filter() -> anyhow::Result<EnvFilter> {
    filter_from(std::env::var("ESPD_LOG").ok().as_deref())
}

/// The filter for an `ESPD_LOG` value (`None`: unset), with the audit target (every control
/// request, see `control/audit.rs`) always enabled at `info`: `ESPD_LOG=warn` quiets the
/// daemon, not its audit trail.
fn filter_from(v: Option<&str>) -> anyhow::Result<EnvFilter> {
    let f = match v {
        Some(v) => EnvFilter::try_new(v).map_err(|e| anyhow::anyhow!("ESPD_LOG={v:?}: {e}"))?,
        None => EnvFilter::new("info"),
    };
    let audit = format!("{AUDIT_TARGET}=info")
        .parse()
        .context("the audit log directive")?;
    Ok(f.add_directive(audit))
}

type BoxedSubscriber = Box<dyn tracing::Subscriber + Send + Sync>;

/// The subscriber for `format`, writing through `writer` (unused for the journal).
fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> anyhow::Result<BoxedSubscriber>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    Ok(match format {
        LogFormat::Plain => Box::new(
            tracing_subscriber::fmt()
                .with_writer(writer)
                .with_ansi(ansi)
                .with_env_filter(filter)
                .finish(),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt()
                .json()
                .with_writer(writer)
                .with_env_filter(filter)
                .finish(),
        ),
        LogFormat::Journald => {
            let journal = tracing_journald::layer()
                .context("--log-format journald: cannot reach the systemd journal")?
                .with_syslog_identifier("espd".to_string());
            Box::new(tracing_subscriber::registry().with(filter).with(journal))
        }
    })
}

/// Installs the global subscriber. Errors (a bad `ESPD_LOG`, no journal) are returned, for
/// `main` to print before doing anything else.
pub fn init(format: LogFormat) -> anyhow::Result<Logging> {
    let filter = filter()?;
    let (sub, guard, dropped) = if format == LogFormat::Journald {
        (build(format, filter, std::io::stderr, false)?, None, None)
    } else {
        // Not lossy: when the buffer is full the thread that logs waits for the writer rather
        // than dropping the line (audit lines must not be lost). Nothing logs per packet (the
        // workers' only log line is said once per socket), so no worker waits in practice.
        let (writer, guard): (NonBlocking, WorkerGuard) =
            tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(std::io::stderr());
        let dropped = writer.error_counter();
        let ansi = std::io::stderr().is_terminal();
        (
            build(format, filter, writer, ansi)?,
            Some(guard),
            Some(dropped),
        )
    };
    sub.try_init().context("installing the log subscriber")?;
    Ok(Logging { guard, dropped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    fn logged(format: LogFormat, filter: &str) -> String {
        let buf = Buf::default();
        let sub = build(format, EnvFilter::new(filter), buf.clone(), false).unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(spi = 0x1234u32, "sa installed");
            tracing::debug!("hidden at info");
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_carry_level_message_and_fields() {
        let out = logged(LogFormat::Json, "info");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["message"], "sa installed");
        assert_eq!(v["fields"]["spi"], 0x1234);
        assert!(v["timestamp"].is_string());
    }

    #[test]
    fn plain_lines_follow_the_filter() {
        let out = logged(LogFormat::Plain, "info");
        assert!(
            out.contains("INFO") && out.contains("sa installed spi=4660"),
            "{out}"
        );
        assert!(!out.contains("hidden"), "{out}");
        let out = logged(LogFormat::Plain, "debug");
        assert!(out.contains("hidden at info"), "{out}");
    }

    /// `ESPD_LOG=warn` (or `off`, or a filter naming other targets) quiets the daemon but not
    /// the audit log.
    #[test]
    fn the_audit_log_is_on_whatever_espd_log_says() {
        for v in [
            None,
            Some("warn"),
            Some("off"),
            Some("espd=error"),
            Some("debug"),
        ] {
            let buf = Buf::default();
            let sub = build(
                LogFormat::Plain,
                filter_from(v).unwrap(),
                buf.clone(),
                false,
            )
            .unwrap();
            tracing::subscriber::with_default(sub, || {
                tracing::info!(target: "espd::audit", "op=sa_add result=ok");
                tracing::info!(target: "espd::control", "ordinary line");
            });
            let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            assert!(out.contains("op=sa_add result=ok"), "ESPD_LOG={v:?}: {out}");
            let ordinary = matches!(v, None | Some("debug"));
            assert_eq!(
                out.contains("ordinary line"),
                ordinary,
                "ESPD_LOG={v:?}: {out}"
            );
        }
        assert!(filter_from(Some("no=such=thing")).is_err());
    }
}
