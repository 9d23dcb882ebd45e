//! Per-controller capture of the library's `tracing` records.
//!
//! A [`LogCapture`] is a `tracing` subscriber installed only as the thread-local default on
//! the controller's own threads and around its API calls, never globally, so two
//! controllers in one process keep separate buffers and a host's own subscriber is left
//! alone. The buffer is bounded: when full, the oldest record is dropped and counted.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};

/// Records kept per controller before the oldest are dropped.
pub const LOG_BUFFER_CAPACITY: usize = 1024;

/// Severity of a captured record, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum LogLevel {
    /// `ERROR`
    Error = 1,
    /// `WARN`
    Warn = 2,
    /// `INFO`
    Info = 3,
    /// `DEBUG`
    Debug = 4,
    /// `TRACE`
    Trace = 5,
}

impl From<&Level> for LogLevel {
    fn from(level: &Level) -> Self {
        match *level {
            Level::ERROR => Self::Error,
            Level::WARN => Self::Warn,
            Level::INFO => Self::Info,
            Level::DEBUG => Self::Debug,
            Level::TRACE => Self::Trace,
        }
    }
}

/// One captured `tracing` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// Wall-clock time of capture, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The event's target (module path unless set explicitly).
    pub target: String,
    /// The `message` field followed by the other fields as `key=value`.
    pub message: String,
}

/// The bounded buffer behind a [`LogCapture`].
#[derive(Debug)]
pub struct LogBuffer {
    records: Mutex<VecDeque<LogRecord>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl LogBuffer {
    /// An empty buffer holding at most `capacity` records (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            records: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn push(&self, record: LogRecord) {
        let mut records = self.records.lock();
        if records.len() == self.capacity {
            records.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        records.push_back(record);
    }

    /// Moves up to `max` of the oldest records into `out`.
    pub fn drain(&self, out: &mut Vec<LogRecord>, max: usize) {
        let mut records = self.records.lock();
        let n = max.min(records.len());
        out.extend(records.drain(..n));
    }

    /// Records waiting to be drained.
    pub fn len(&self) -> usize {
        self.records.lock().len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A `tracing` subscriber that appends events at or above a level to a [`LogBuffer`].
///
/// Spans are accepted and ignored: only events are captured.
#[derive(Debug, Clone)]
pub struct LogCapture {
    buffer: Arc<LogBuffer>,
    max_level: Level,
}

impl LogCapture {
    /// A capture into `buffer` of events at `max_level` or more severe.
    pub fn new(buffer: Arc<LogBuffer>, max_level: Level) -> Self {
        Self { buffer, max_level }
    }

    /// The capture as a dispatcher for `tracing::dispatcher::set_default`/`with_default`.
    pub fn into_dispatch(self) -> Dispatch {
        Dispatch::new(self)
    }
}

struct MessageVisitor<'a> {
    message: &'a mut String,
    fields: &'a mut String,
}

impl Visit for MessageVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

impl Subscriber for LogCapture {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // "sometimes": other threads may run other subscribers for the same callsite.
        if self.enabled(metadata) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && *metadata.level() <= self.max_level
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(
            self.max_level,
        ))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut message = String::new();
        let mut fields = String::new();
        event.record(&mut MessageVisitor {
            message: &mut message,
            fields: &mut fields,
        });
        message.push_str(&fields);
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.buffer.push(LogRecord {
            level: event.metadata().level().into(),
            time_ms,
            target: event.metadata().target().to_owned(),
            message,
        });
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_only_where_installed_and_bounds_the_buffer() {
        let buffer = Arc::new(LogBuffer::new(2));
        let dispatch = LogCapture::new(buffer.clone(), Level::INFO).into_dispatch();
        tracing::info!("outside");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::debug!("too verbose");
            tracing::info!(key = 7, "first");
            tracing::warn!("second");
            tracing::error!(addr = %"10.0.0.2", "third");
        });
        let mut out = Vec::new();
        buffer.drain(&mut out, 10);
        assert_eq!(buffer.dropped(), 1);
        let texts: Vec<_> = out.iter().map(|r| (r.level, r.message.as_str())).collect();
        assert_eq!(
            texts,
            vec![
                (LogLevel::Warn, "second"),
                (LogLevel::Error, "third addr=10.0.0.2")
            ]
        );
        assert!(buffer.is_empty());
    }
}
