//! Progress of long jobs on stderr: bars on a terminal, one line per finished stage otherwise
//! (indicatif hides its bars when stderr is not a terminal, e.g. in CI logs).

use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use vigil::offline::Reporter;

/// Progress bars on stderr (hidden when stderr is not a terminal, e.g. in CI logs, where a line
/// per stage is printed instead).
pub struct Bars {
    bar: std::sync::Mutex<Option<(ProgressBar, Instant, String)>>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            bar: std::sync::Mutex::new(None),
        }
    }
}

impl Reporter for Bars {
    fn stage(&self, name: &str, total: u64) {
        let bar = if total > 0 {
            ProgressBar::new(total)
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:40}] {human_pos}/{human_len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        if let Ok(mut g) = self.bar.lock() {
            *g = Some((bar, Instant::now(), name.to_string()));
        }
    }
    fn progress(&self, done: u64) {
        if let Ok(g) = self.bar.lock() {
            if let Some((b, _, _)) = g.as_ref() {
                b.set_position(done);
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut g) = self.bar.lock() {
            if let Some((b, started, name)) = g.take() {
                b.finish_and_clear();
                // A closed stderr is no reason to fail a job that succeeded.
                errln!(
                    "{name:>9}: {} in {:.1}s",
                    b.position(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
}
