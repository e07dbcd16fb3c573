//! Logging in Postfix's line shape, so pflogsumm, fail2ban and people's habits keep working:
//!
//! ```text
//! Nov 23 08:16:17 mail postfix/smtpd[13278]: connect from unknown[127.0.0.1]
//! ```
//!
//! A daemon logs through `tracing` inside a span that carries a `tag` field
//! (`syslog_name/process`, e.g. `postfix/smtpd` or `postfix/smtps/smtpd`); [`service_span`]
//! makes one. Warnings and errors get Postfix's `warning: ` / `error: ` prefixes, and events
//! with the target [`FATAL`] its `fatal: ` prefix (the reason a program gives up, which
//! Postfix's msg_fatal() logs before exiting). Lines go to `maillog_file` (appended, one
//! write per line) or to standard error when it is empty.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// The target of an event that says why a program gives up:
/// `tracing::error!(target: relais::log::FATAL, "…")` is logged as `fatal: …`.
pub const FATAL: &str = "relais::fatal";

/// Postfix's `%m`: the C library's text for an OS error (`No space left on device`), without
/// the ` (os error 28)` Rust adds.
pub fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match e.raw_os_error() {
        Some(n) => s
            .strip_suffix(&format!(" (os error {n})"))
            .map(str::to_string)
            .unwrap_or(s),
        None => s,
    }
}

/// `%m` for an error that arrives as text only (sled's errors and the queue's keep no source
/// chain): the OS error named in it, as std::io::Error's Display (`… (os error 28)`) or, as
/// sled writes it, its Debug (`sled: IO error: Os { code: 28, kind: StorageFull, … }`), gives
/// `No space left on device`; else the whole text.
pub fn os_reason(text: &str) -> String {
    let code = |mark: &str, end: char| {
        text.rfind(mark)
            .and_then(|i| text[i + mark.len()..].split(end).next())
            .and_then(|n| n.trim().parse::<i32>().ok())
    };
    code("(os error ", ')')
        .or_else(|| code("Os { code: ", ','))
        .map(|n| strerror(&std::io::Error::from_raw_os_error(n)))
        .unwrap_or_else(|| text.to_string())
}

/// One log line in Postfix's shape (`Nov 23 08:16:17 mail postfix/master[42]: fatal: …`);
/// `host` is shortened to its first label as syslog shows it.
pub fn format_line(host: &str, tag: &str, prefix: &str, text: &str) -> String {
    let host = host.split('.').next().unwrap_or(host);
    format!(
        "{} {} {}[{}]: {}{}\n",
        chrono::Local::now().format("%b %e %H:%M:%S"),
        host,
        tag,
        std::process::id(),
        prefix,
        text
    )
}

/// The span every daemon's work runs in; `tag` is what appears before `[pid]`.
#[macro_export]
macro_rules! service_span {
    ($tag:expr) => {
        tracing::info_span!("service", tag = %$tag)
    };
}
pub use service_span;

/// `syslog_name/process` as Postfix composes it (`postfix/smtpd`, `postfix/smtps/smtpd`).
pub fn tag(syslog_name: &str, process: &str) -> String {
    format!("{syslog_name}/{process}")
}

struct Tag(String);

#[derive(Default)]
struct TagVisitor(Option<String>);
impl Visit for TagVisitor {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "tag" {
            self.0 = Some(format!("{v:?}"));
        }
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "tag" {
            self.0 = Some(v.to_string());
        }
    }
}

#[derive(Default)]
struct MessageVisitor(String);
impl Visit for MessageVisitor {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let _ = write!(self.0, "{v:?}");
        } else {
            let _ = write!(self.0, " {}={v:?}", f.name());
        }
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "message" {
            self.0.push_str(v);
        } else {
            let _ = write!(self.0, " {}={v}", f.name());
        }
    }
}

/// Where log lines go.
pub type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// A tracing layer writing Postfix-shaped lines.
pub struct PostfixLayer {
    host: String,
    default_tag: String,
    sink: Sink,
    verbose: bool,
}

impl PostfixLayer {
    pub fn new(host: &str, default_tag: &str, sink: Sink, verbose: bool) -> Self {
        // syslog shows the host's first label, as in the reference logs ("mail").
        let host = host.split('.').next().unwrap_or(host).to_string();
        PostfixLayer {
            host,
            default_tag: default_tag.to_string(),
            sink,
            verbose,
        }
    }
}

impl<S> Layer<S> for PostfixLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut v = TagVisitor::default();
        attrs.record(&mut v);
        if let (Some(t), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().insert(Tag(t));
        }
    }

    // Tells tracing (and, through tracing-log, the `log` facade sled writes to) that debug
    // and trace records are not wanted: their macros then cost a comparison, where before
    // every sled trace record was built and handed to `on_event` to be dropped.
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(if self.verbose {
            tracing::level_filters::LevelFilter::TRACE
        } else {
            tracing::level_filters::LevelFilter::INFO
        })
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO && !self.verbose {
            return;
        }
        // Only our own crate's lines: dependencies' chatter is not mail log material.
        let target = event.metadata().target();
        if !target.starts_with("relais") && !self.verbose {
            return;
        }
        let mut tag = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(t) = span.extensions().get::<Tag>() {
                    tag = Some(t.0.clone());
                    break;
                }
            }
        }
        let tag = tag.unwrap_or_else(|| self.default_tag.clone());
        let mut msg = MessageVisitor::default();
        event.record(&mut msg);
        let prefix = match level {
            _ if target == FATAL => "fatal: ",
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        let line = format_line(&self.host, &tag, prefix, &msg.0);
        if let Ok(mut w) = self.sink.lock() {
            let _ = w.write_all(line.as_bytes());
            let _ = w.flush();
        }
    }
}

/// Opens `maillog_file` for appending (standard error when empty; `/dev/stdout` works).
pub fn open_sink(maillog_file: &str) -> std::io::Result<Sink> {
    let w: Box<dyn Write + Send> = match maillog_file {
        "" => Box::new(std::io::stderr()),
        "/dev/stdout" => Box::new(std::io::stdout()),
        "/dev/stderr" => Box::new(std::io::stderr()),
        path => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    };
    Ok(Arc::new(Mutex::new(w)))
}

/// Installs the Postfix-shaped logger as the global subscriber (once per process).
pub fn init(host: &str, default_tag: &str, sink: Sink, verbose: bool) {
    let layer = PostfixLayer::new(host, default_tag, sink, verbose);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_have_postfix_shape() {
        let buf = Buf::default();
        let sink: Sink = Arc::new(Mutex::new(Box::new(buf.clone())));
        let sub = tracing_subscriber::registry().with(PostfixLayer::new(
            "mail.exemple.fr",
            "postfix/master",
            sink,
            false,
        ));
        tracing::subscriber::with_default(sub, || {
            let span = service_span!(tag("postfix", "smtpd"));
            let _e = span.enter();
            tracing::info!("connect from unknown[127.0.0.1]");
            tracing::warn!("hostname nowhere does not resolve");
            tracing::error!(target: FATAL, "bind 127.0.0.1 port 25: Address already in use");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let re = regex::Regex::new(
            r"^[A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d mail postfix/smtpd\[\d+\]: connect from unknown\[127\.0\.0\.1\]\n",
        )
        .unwrap();
        assert!(re.is_match(&out), "{out}");
        assert!(out.contains("postfix/smtpd["), "{out}");
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .contains("]: warning: hostname nowhere"),
            "{out}"
        );
        assert!(
            out.lines().nth(2).unwrap().contains("postfix/smtpd[")
                && out.contains("]: fatal: bind 127.0.0.1 port 25: Address already in use"),
            "{out}"
        );
    }

    #[test]
    fn os_errors_read_as_postfix_prints_them() {
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(strerror(&e), "No space left on device");
        assert_eq!(
            os_reason("sled: IO error: No space left on device (os error 28)"),
            "No space left on device"
        );
        assert_eq!(
            os_reason(
                "sled: IO error: Os { code: 28, kind: StorageFull, message: \"No space left on device\" }"
            ),
            "No space left on device"
        );
        assert_eq!(
            os_reason("body segment 3: Input/output error (os error 5)"),
            "Input/output error"
        );
        assert_eq!(
            os_reason("sled: Corruption at 12"),
            "sled: Corruption at 12"
        );
    }
}
