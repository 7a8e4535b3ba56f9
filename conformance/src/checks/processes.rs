//! Several processes on one home: a store is shared by a daemon, the CLI
//! and other tools at once, and any of them may be killed. Each check runs
//! driver instances in worker processes (the runner re-executes itself, see
//! `worker`) beside the suite's own instance.

use std::fs;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{Layers, check, io};
use crate::worker::count_entries;
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

/// Files in each check's base layer: enough that a copying driver takes a
/// while to make a child, so kills and starts land inside creates.
const BASE_FILES: usize = 400;

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "processes/parallel-lifecycles-while-others-start",
            "Four processes creating, mounting, writing, unmounting and removing layers on one home, while further processes start the driver on it, all succeed and leave nothing behind.",
            parallel_lifecycles,
        ),
        check(
            "processes/same-ids-from-several-processes",
            "When four processes create the same ids at once, each id is made exactly once (the others get AlreadyExists) and holds exactly its parent's tree; removing them from four processes removes each once (the others get NotFound).",
            same_ids,
        ),
        check(
            "processes/killed-processes-leave-a-home-the-next-start-cleans",
            "A process killed (SIGKILL) at random points of create, mount and remove leaves no half-made layer: after the next start every listed layer is whole and removable and no leftover stays in the home, while a live process working beside it meets no failure.",
            killed_processes,
        ),
    ]
}

/// A command starting a worker process on the suite's home, or a skip.
fn worker(suite: &Suite, task: &[&str]) -> Result<Command, Verdict> {
    let Some(spawn) = suite.options.worker.as_ref() else {
        return Err(Verdict::Skip(
            "the suite was not given a way to start the driver in another process (the strata-conformance runner does)".into(),
        ));
    };
    let task: Vec<String> = task.iter().map(|s| s.to_string()).collect();
    let mut command = spawn(&task);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command)
}

fn spawn(suite: &Suite, task: &[&str]) -> Result<Child, Verdict> {
    let mut command = worker(suite, task)?;
    command
        .spawn()
        .map_err(|e| Verdict::Fail(format!("start a worker process for {task:?}: {e}")))
}

/// Waits for a worker and fails unless it succeeded.
fn finished(child: Child, what: &str) -> Result<Output, Verdict> {
    let output = child
        .wait_with_output()
        .map_err(|e| Verdict::Fail(format!("wait for {what}: {e}")))?;
    ensure!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

/// A base layer holding `BASE_FILES` files in a few directories.
fn make_base(layers: &mut Layers, id: &str) -> Result<usize, Verdict> {
    layers.create(id, None)?;
    let root = layers.mount(id)?;
    for i in 0..BASE_FILES {
        let dir = root.join(format!("d{}", i % 8));
        io("mkdir", fs::create_dir_all(&dir))?;
        io("write", fs::write(dir.join(format!("f{i}")), i.to_string()))?;
    }
    io(
        "write",
        fs::write(root.join(crate::worker::BASE_MARKER), b"base"),
    )?;
    let count = io("count the base", count_entries(&root))?;
    layers.unmount(id)?;
    Ok(count)
}

/// Removes, when dropped, every layer whose id starts with the prefix
/// except the base (which the check's `Layers` removes after): what worker
/// processes made, so a failing check leaves nothing to the next one.
struct Sweep<'d> {
    driver: &'d dyn strata_plugin_abi::GraphDriver,
    prefix: &'static str,
    base: &'static str,
}

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        for id in self.driver.list().unwrap_or_default() {
            if id.starts_with(self.prefix) && id != self.base {
                let _ = self.driver.remove(&id);
            }
        }
    }
}

/// The suite's layers other than `keep`.
fn others(suite: &Suite, keep: &str) -> Result<Vec<String>, Verdict> {
    let mut listed = suite
        .driver
        .list()
        .map_err(|e| Verdict::Fail(format!("list: {e}")))?;
    listed.retain(|id| id != keep);
    listed.sort();
    Ok(listed)
}

fn parallel_lifecycles(suite: &Suite) -> CheckOutcome {
    worker(suite, &["start"])?;
    let mut layers = Layers::new(suite.driver);
    let base = "conformance-proc-base";
    let _sweep = Sweep {
        driver: suite.driver,
        prefix: "conformance-proc-",
        base,
    };
    let entries = make_base(&mut layers, base)?.to_string();
    let prefixes: Vec<String> = (0..4).map(|i| format!("conformance-proc-{i}")).collect();
    let mut running = Vec::new();
    for prefix in &prefixes {
        running.push(spawn(suite, &["lifecycle", prefix, "6", base, &entries])?);
    }
    // Drivers starting on the home while the others are mid-create.
    let mut starts = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
        ensure!(
            Instant::now() < deadline,
            "the workers did not finish in 120 s"
        );
        finished(
            spawn(suite, &["start"])?,
            "a driver starting beside the workers",
        )?;
        starts += 1;
    }
    for (child, prefix) in running.into_iter().zip(&prefixes) {
        let output = finished(child, &format!("worker {prefix}"))?;
        ensure!(
            String::from_utf8_lossy(&output.stdout).contains("done 6"),
            "worker {prefix} did not finish its rounds"
        );
    }
    tracing::debug!(starts, "driver starts beside the lifecycle workers");
    let left = others(suite, base)?;
    ensure!(left.is_empty(), "layers left after the workers: {left:?}");
    Ok(())
}

fn same_ids(suite: &Suite) -> CheckOutcome {
    worker(suite, &["start"])?;
    let mut layers = Layers::new(suite.driver);
    let base = "conformance-same-base";
    let _sweep = Sweep {
        driver: suite.driver,
        prefix: "conformance-same-",
        base,
    };
    let base_count = make_base(&mut layers, base)?;
    let ids: Vec<String> = (0..8).map(|i| format!("conformance-same-{i}")).collect();
    for id in &ids {
        // Removed on drop whatever happens (NotFound if already gone).
        layers.adopt(id);
    }
    let tally = |task: &str, yes: &str, no: &str| -> Result<(), Verdict> {
        let mut args = vec![task];
        if task == "create-same" {
            args.push(base);
        }
        args.extend(ids.iter().map(String::as_str));
        let children: Vec<Child> = (0..4)
            .map(|_| spawn(suite, &args))
            .collect::<Result<_, _>>()?;
        let mut outputs = Vec::new();
        for child in children {
            outputs.push(String::from_utf8_lossy(&finished(child, task)?.stdout).into_owned());
        }
        for id in &ids {
            let wins = outputs
                .iter()
                .flat_map(|o| o.lines())
                .filter(|l| *l == format!("{yes} {id}"))
                .count();
            let losses = outputs
                .iter()
                .flat_map(|o| o.lines())
                .filter(|l| *l == format!("{no} {id}"))
                .count();
            ensure!(
                wins == 1 && losses == 3,
                "{task} of {id} from four processes: {wins} succeeded and {losses} were refused, expected 1 and 3"
            );
        }
        Ok(())
    };
    tally("create-same", "won", "lost")?;
    for id in &ids {
        let path = layers.mount(id)?;
        let found = io("count", count_entries(&path));
        layers.unmount(id)?;
        let found = found?;
        ensure!(
            found == base_count,
            "{id}, made while three other processes tried the same id, holds {found} entries, its parent {base_count}"
        );
    }
    tally("remove-same", "removed", "gone")?;
    let left = others(suite, base)?;
    ensure!(left.is_empty(), "layers left after removal: {left:?}");
    Ok(())
}

/// A small deterministic-enough generator for kill delays (xorshift).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        Jitter(seed | 1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(low + self.0 % (high - low))
    }
}

const KILLS: usize = 12;

fn killed_processes(suite: &Suite) -> CheckOutcome {
    worker(suite, &["start"])?;
    let mut layers = Layers::new(suite.driver);
    let base = "conformance-kill-base";
    let _sweep = Sweep {
        driver: suite.driver,
        prefix: "conformance-kill-",
        base,
    };
    let base_count = make_base(&mut layers, base)?;
    // A live process doing its own work all along.
    let entries = base_count.to_string();
    let steady = spawn(
        suite,
        &["lifecycle", "conformance-kill-steady", "10", base, &entries],
    )?;
    let mut jitter = Jitter::new();
    for k in 0..KILLS {
        let prefix = format!("conformance-kill-victim{k}");
        let mut victim = spawn(suite, &["churn", &prefix, base, &entries])?;
        std::thread::sleep(jitter.millis(20, 250));
        if let Ok(Some(status)) = victim.try_wait() {
            let output = victim.wait_with_output().ok();
            let stderr = output
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            return Err(Verdict::Fail(format!(
                "the churning worker stopped by itself before it was killed ({status}): {}",
                stderr.trim()
            )));
        }
        io("kill the worker", victim.kill())?;
        io("reap the worker", victim.wait())?;
    }
    finished(steady, "the live worker beside the killed ones")?;
    // The next start finds what the killed ones left.
    finished(
        spawn(suite, &["start"])?,
        "a driver started after the kills",
    )?;
    for id in others(suite, base)? {
        ensure!(
            id.starts_with("conformance-kill-victim"),
            "after the kills the driver lists {id}, which nobody made"
        );
        layers.adopt(&id);
        // Whole: the parent's tree, plus the file the worker may have written.
        let path = layers.mount(&id)?;
        let found = io("count", count_entries(&path));
        layers.unmount(&id)?;
        let found = found?;
        ensure!(
            found == base_count || found == base_count + 1,
            "{id}, listed after its maker was killed, holds {found} entries where its parent has {base_count}: a half-made layer"
        );
        layers.remove(&id)?;
    }
    Ok(())
}
