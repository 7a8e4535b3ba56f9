//! Progress bars for an import on a terminal.

use strata_core::oci::ImportProgress;

use crate::output::short;

/// One progress bar per layer on standard error.
#[derive(Default)]
pub(crate) struct ProgressBars {
    multi: indicatif::MultiProgress,
    bars: std::sync::Mutex<Vec<Option<indicatif::ProgressBar>>>,
}

impl ImportProgress for ProgressBars {
    fn layer_started(&self, index: usize, count: usize, digest: &str, size: u64) {
        let bar = self.multi.add(indicatif::ProgressBar::new(size));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        let hex = digest.trim_start_matches("sha256:");
        bar.set_prefix(format!("layer {}/{count} {}", index + 1, short(hex)));
        let mut bars = self.bars.lock().expect("progress lock");
        if bars.len() <= index {
            bars.resize(index + 1, None);
        }
        bars[index] = Some(bar);
    }

    fn layer_advanced(&self, index: usize, bytes: u64) {
        if let Some(Some(bar)) = self.bars.lock().expect("progress lock").get(index) {
            bar.inc(bytes);
        }
    }

    fn layer_finished(&self, index: usize, reused: bool) {
        if let Some(Some(bar)) = self.bars.lock().expect("progress lock").get(index) {
            bar.finish_with_message(if reused { "already present" } else { "done" });
        }
    }
}
