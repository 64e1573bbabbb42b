//! What a person watching sees: a progress bar per stream on a terminal, a plain log line per
//! stream at intervals elsewhere, and a summary at the end. Everything goes to stderr.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Seconds between plain progress lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn expected() -> &'static std::sync::Mutex<HashMap<String, u64>> {
    static EXPECTED: OnceLock<std::sync::Mutex<HashMap<String, u64>>> = OnceLock::new();
    EXPECTED.get_or_init(|| std::sync::Mutex::new(HashMap::new()))
}

/// A tap's estimate of a stream's rows (a table's row estimate), for a total and an ETA. Taps
/// call it from wherever they run; the progress of the sink picks it up.
pub fn expect_rows(stream: &str, total: u64) {
    if total > 0 {
        expected()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(stream.to_owned(), total);
    }
}

fn expected_rows(stream: &str) -> Option<u64> {
    expected()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(stream)
        .copied()
}

/// The bars, if bars are shown; the log writer suspends them while it writes a line.
pub fn bars() -> Option<&'static MultiProgress> {
    BARS.get()
}

/// Decides once per process whether bars are shown: only when stderr is a terminal and
/// neither `--quiet` nor `--no-progress` (or `FERRY_NO_PROGRESS`) was given.
pub fn init(quiet: bool, no_progress: bool) {
    let show = !quiet
        && !no_progress
        && std::env::var_os("FERRY_NO_PROGRESS").is_none()
        && std::io::stderr().is_terminal();
    if show {
        let _ = BARS.set(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
    }
}

struct StreamProgress {
    bar: Option<ProgressBar>,
    rows: u64,
    started: Instant,
    last_log: Instant,
}

/// Per-stream progress of one run.
pub struct Progress {
    streams: HashMap<String, StreamProgress>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// A new tracker.
    pub fn new() -> Progress {
        Progress {
            streams: HashMap::new(),
        }
    }

    /// Adds rows loaded for a stream; called once per chunk, not per row.
    pub fn add(&mut self, stream: &str, rows: u64) {
        let sp = self.streams.entry(stream.to_owned()).or_insert_with(|| {
            let bar = bars().map(|m| {
                let bar = match expected_rows(stream) {
                    Some(t) => ProgressBar::new(t).with_style(
                        ProgressStyle::with_template(
                            "{prefix:>20} {bar:30} {human_pos}/{human_len} rows {rate} eta {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .with_key("rate", rate),
                    ),
                    None => ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template(
                            "{prefix:>20} {spinner} {human_pos} rows {rate} {elapsed}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_spinner())
                        .with_key("rate", rate),
                    ),
                };
                let bar = m.add(bar);
                bar.set_prefix(stream.to_owned());
                bar
            });
            let now = Instant::now();
            StreamProgress {
                bar,
                rows: 0,
                started: now,
                last_log: now,
            }
        });
        sp.rows += rows;
        match &sp.bar {
            Some(bar) => bar.set_position(sp.rows),
            None => {
                if sp.last_log.elapsed() >= LOG_EVERY {
                    sp.last_log = Instant::now();
                    let secs = sp.started.elapsed().as_secs_f64().max(1e-9);
                    tracing::info!(
                        stream,
                        rows = sp.rows,
                        rows_per_sec = (sp.rows as f64 / secs) as u64,
                        "Stream in progress."
                    );
                }
            }
        }
    }

    /// Removes the bars (the summary follows).
    pub fn finish(&mut self) {
        for sp in self.streams.values() {
            if let Some(bar) = &sp.bar {
                bar.finish_and_clear();
            }
        }
    }
}

/// Rows per second, whole.
fn rate(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.0} rows/s", state.per_sec());
}

/// A `tracing` writer that keeps log lines from tearing through the bars.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match bars() {
            Some(m) => m
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => std::io::stderr().write_all(buf).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}
