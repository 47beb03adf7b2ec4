//! Log output on stderr: human-readable lines by default (journald adds its own timestamps), or
//! one JSON object per line (`--log-format json`) for journald's structured fields, Loki and
//! friends. Filtered by `RUST_LOG`, else the config's `[log] filter`, else `info`; a reload
//! applies a changed `[log] filter` unless `RUST_LOG` is set.
//!
//! The JSON lines are written here on serde_json (already a dependency) rather than with
//! tracing-subscriber's `json` feature, which would pull in another crate for ~80 lines.

use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
}

/// Longest peer-supplied value a log line quotes (characters).
const MAX_PEER_TEXT: usize = 200;

/// A value a peer sent (a client's ID name, an address, a refused value) as a log line may
/// quote it: control characters and backslashes escaped (`\r`, `\n`, `\x1b`, `\\`), so that
/// it can neither end the line nor colour the terminal, and cut at 200 characters, so that a
/// client cannot make the log grow by what it sends.
pub fn peer_text(value: &str) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == MAX_PEER_TEXT {
            out.push_str(&format!("... ({} bytes)", value.len()));
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), tracing_subscriber::reload::Error> + Send + Sync>;

/// Swaps the filter of the installed subscriber (set by [`init`]).
static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// The protocol trace's target: its lines are logged at `info`, whatever the filter says for
/// the rest, while `--trace-protocol` is on.
const PROTOCOL_TARGET: &str = "coi_proxy::protocol";
static PROTOCOL_TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keeps the protocol trace's lines through every filter (`RUST_LOG=warn` included), now and
/// after a reload; call before [`init`].
pub fn keep_protocol_trace() {
    PROTOCOL_TRACE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Installs the global subscriber. Later calls are ignored (tests may call it repeatedly).
pub fn init(config_filter: Option<&str>, format: Format) {
    let filter = filter(config_filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The reload handle's type names the whole subscriber, hence one chain per format.
    let installed = match format {
        Format::Human => {
            let builder =
                tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).with_writer(std::io::stderr);
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map(|()| Box::new(move |f| handle.reload(f)) as SetFilter)
        }
        Format::Json => {
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .fmt_fields(JsonFields)
                .event_format(JsonLines)
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map(|()| Box::new(move |f| handle.reload(f)) as SetFilter)
        }
    };
    if let Ok(set) = installed {
        let _ = SET_FILTER.set(set);
    }
}

/// What a reload did with `[log] filter`.
#[derive(Debug, PartialEq, Eq)]
pub enum FilterReload {
    /// In force now (the filter, as written).
    Applied(String),
    /// Not applied: `RUST_LOG` (its value) is set and keeps precedence until a restart without it.
    EnvWins(String),
}

/// Puts a reloaded `[log] filter` in force; `RUST_LOG`, when set, keeps precedence. The filter
/// has been validated with the configuration (`config::Config::validate`).
pub fn reload_filter(config_filter: Option<&str>) -> FilterReload {
    if let Ok(env) = std::env::var("RUST_LOG")
        && !env.is_empty()
    {
        return FilterReload::EnvWins(env);
    }
    if let Some(set) = SET_FILTER.get()
        && let Err(e) = set(filter(config_filter))
    {
        tracing::warn!("cannot change the log filter: {e}");
    }
    FilterReload::Applied(config_filter.unwrap_or("info").to_string())
}

fn filter(config_filter: Option<&str>) -> EnvFilter {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.is_empty())
        .or_else(|| config_filter.map(str::to_string))
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("coi-proxy: ignoring invalid log filter {filter:?}: {e}");
        EnvFilter::new("info")
    });
    match PROTOCOL_TRACE.load(std::sync::atomic::Ordering::Relaxed) {
        true => filter.add_directive(format!("{PROTOCOL_TARGET}=info").parse().expect("a valid directive")),
        false => filter,
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, the event's fields (`message`
/// among them) and `spans`, root first, each with its `name` and fields.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        event.record(&mut JsonVisitor(&mut line));
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let ext = span.extensions();
                    let mut fields = ext
                        .get::<FormattedFields<N>>()
                        .and_then(|f| serde_json::from_str::<Map<String, Value>>(&f.fields).ok())
                        .unwrap_or_default();
                    fields.insert("name".into(), span.name().into());
                    Value::Object(fields)
                })
                .collect();
            line.insert("spans".into(), spans.into());
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Span fields kept as a JSON object (so [`JsonLines`] can nest them); fields recorded later
/// (`login` once known) are merged in.
struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut map = Map::new();
        fields.record(&mut JsonVisitor(&mut map));
        write!(writer, "{}", Value::Object(map))
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut map: Map<String, Value> = serde_json::from_str(&current.fields).unwrap_or_default();
        fields.record(&mut JsonVisitor(&mut map));
        current.fields = Value::Object(map).to_string();
        Ok(())
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// RFC 3339 in UTC with milliseconds.
fn timestamp() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::peer_text;

    #[test]
    fn peer_text_is_one_escaped_short_line() {
        assert_eq!(peer_text("Delta Chat"), "Delta Chat");
        assert_eq!(peer_text("Evil\r\n2026 INFO x \x1b[31m\\"), "Evil\\r\\n2026 INFO x \\x1b[31m\\\\");
        assert_eq!(peer_text("a\u{2028}b\u{202e}"), "a\\u{2028}b\\u{202e}");
        let long = peer_text(&"n".repeat(15_000));
        assert!(long.starts_with(&"n".repeat(200)) && long.ends_with("... (15000 bytes)"), "{long}");
    }
}
