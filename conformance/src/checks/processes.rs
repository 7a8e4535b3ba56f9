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

/// A worker process, killed and reaped if the check ends before it does
/// (a check that fails early leaves no worker behind to disturb the next).
struct Worker {
    child: Option<Child>,
    what: String,
}

impl Worker {
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for it and fails unless it succeeded; its output.
    fn finished(mut self) -> Result<Output, Verdict> {
        let child = self.child.take().expect("a worker is waited for once");
        let output = child
            .wait_with_output()
            .map_err(|e| Verdict::Fail(format!("wait for {}: {e}", self.what)))?;
        ensure!(
            output.status.success(),
            "{} failed ({}): {}",
            self.what,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(output)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(suite: &Suite, task: &[&str], what: impl Into<String>) -> Result<Worker, Verdict> {
    let mut command = worker(suite, task)?;
    let child = command
        .spawn()
        .map_err(|e| Verdict::Fail(format!("start a worker process for {task:?}: {e}")))?;
    Ok(Worker {
        child: Some(child),
        what: what.into(),
    })
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
    layers.claim_prefix("conformance-proc-");
    let base = "conformance-proc-base";
    let entries = make_base(&mut layers, base)?.to_string();
    let mut running = Vec::new();
    for i in 0..4 {
        let prefix = format!("conformance-proc-{i}");
        let task = ["lifecycle", &prefix, "6", base, &entries];
        running.push(spawn(suite, &task, format!("worker {prefix}"))?);
    }
    // Drivers starting on the home while the others are mid-create.
    let mut starts = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.iter_mut().any(Worker::running) {
        ensure!(
            Instant::now() < deadline,
            "the workers did not finish in 120 s"
        );
        spawn(suite, &["start"], "a driver starting beside the workers")?.finished()?;
        starts += 1;
    }
    ensure!(
        starts > 0,
        "no driver started while the workers ran: nothing was checked"
    );
    for worker in running {
        let what = worker.what.clone();
        let output = worker.finished()?;
        ensure!(
            String::from_utf8_lossy(&output.stdout).contains("done 6"),
            "{what} did not finish its rounds"
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
    layers.claim_prefix("conformance-same-");
    let base = "conformance-same-base";
    let base_count = make_base(&mut layers, base)?;
    let ids: Vec<String> = (0..8).map(|i| format!("conformance-same-{i}")).collect();
    let tally = |task: &str, yes: &str, no: &str| -> Result<(), Verdict> {
        let mut args = vec![task];
        if task == "create-same" {
            args.push(base);
        }
        args.extend(ids.iter().map(String::as_str));
        let workers: Vec<Worker> = (0..4)
            .map(|i| spawn(suite, &args, format!("{task} worker {i}")))
            .collect::<Result<_, _>>()?;
        let mut outputs = Vec::new();
        for worker in workers {
            outputs.push(String::from_utf8_lossy(&worker.finished()?.stdout).into_owned());
        }
        for id in &ids {
            let said = |word: &str| {
                outputs
                    .iter()
                    .flat_map(|o| o.lines())
                    .filter(|l| *l == format!("{word} {id}"))
                    .count()
            };
            let (wins, losses) = (said(yes), said(no));
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
        let marker = fs::read(path.join(crate::worker::BASE_MARKER)).unwrap_or_default();
        layers.unmount(id)?;
        let found = found?;
        ensure!(
            found == base_count && marker == b"base",
            "{id}, made while three other processes tried the same id, holds {found} entries (its parent {base_count}) and reads {marker:?} from the parent's marker"
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

/// Starts a churning victim, waits until its driver is up, lets it work a
/// random while and kills it; says whether the kill landed inside a round
/// (between a `begin` and its `end`).
fn kill_one(
    suite: &Suite,
    prefix: &str,
    base: &str,
    entries: &str,
    jitter: &mut Jitter,
) -> Result<bool, Verdict> {
    let task = ["churn", prefix, base, entries];
    let mut victim = spawn(suite, &task, format!("victim {prefix}"))?;
    let stdout = victim
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .expect("worker stdout is piped");
    let (lines, heard) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = Vec::new();
    loop {
        match heard.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line == "ready" => break,
            Ok(line) => said.push(line),
            Err(_) => {
                let running = victim.running();
                drop(victim);
                return Err(Verdict::Fail(format!(
                    "{prefix} never said it was ready (still running: {running})"
                )));
            }
        }
    }
    std::thread::sleep(jitter.millis(5, 120));
    ensure!(
        victim.running(),
        "the churning worker {prefix} stopped by itself before it was killed"
    );
    drop(victim); // SIGKILL, reaped
    let _ = reader.join();
    said.extend(heard.try_iter());
    let begins = said.iter().filter(|l| l.starts_with("begin ")).count();
    let ends = said.iter().filter(|l| l.starts_with("end ")).count();
    Ok(begins > ends)
}

fn killed_processes(suite: &Suite) -> CheckOutcome {
    worker(suite, &["start"])?;
    let mut layers = Layers::new(suite.driver);
    layers.claim_prefix("conformance-kill-");
    let base = "conformance-kill-base";
    let base_count = make_base(&mut layers, base)?;
    let entries = base_count.to_string();
    // A live process doing its own work all along.
    let steady = spawn(
        suite,
        &["lifecycle", "conformance-kill-steady", "10", base, &entries],
        "the live worker beside the killed ones",
    )?;
    let mut jitter = Jitter::new();
    let mut inside = 0;
    for k in 0..KILLS {
        let prefix = format!("conformance-kill-victim{k}");
        if kill_one(suite, &prefix, base, &entries, &mut jitter)? {
            inside += 1;
        }
    }
    // Kills that all landed between rounds would prove nothing.
    ensure!(
        inside * 2 >= KILLS,
        "only {inside} of {KILLS} kills landed inside a create, mount or remove"
    );
    steady.finished()?;
    // The next start finds what the killed ones left.
    spawn(suite, &["start"], "a driver started after the kills")?.finished()?;
    for id in others(suite, base)? {
        ensure!(
            id.starts_with("conformance-kill-victim"),
            "after the kills the driver lists {id}, which nobody made"
        );
        // Whole: the parent's tree, plus the file the worker may have written.
        let path = layers.mount(&id)?;
        let found = io("count", count_entries(&path));
        layers.unmount(&id)?;
        let found = found?;
        ensure!(
            found == base_count || found == base_count + 1,
            "{id}, listed after its maker was killed, holds {found} entries where its parent has {base_count}: a half-made layer"
        );
        layers.adopt(&id);
        layers.remove(&id)?;
    }
    Ok(())
}
