//! Many threads creating, mounting, writing, unmounting and removing
//! different layers at once, all children of one parent.

use std::fs;

use super::{Layers, check, io};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

const THREADS: usize = 8;
const ROUNDS: usize = 6;

pub fn checks() -> Vec<Check> {
    vec![check(
        "concurrency/parallel-lifecycles",
        "8 threads at once create, mount, write, read back, unmount and remove their own children of one parent; each sees the parent's file and its own write, and no child is left.",
        parallel_lifecycles,
    )]
}

fn parallel_lifecycles(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-par-base", None)?;
    let base = layers.mount("conformance-par-base")?;
    io("write", fs::write(base.join("shared"), b"base"))?;
    layers.unmount("conformance-par-base")?;
    let driver = suite.driver;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || -> Result<(), String> {
                    for round in 0..ROUNDS {
                        let id = format!("conformance-par-{t}-{round}");
                        let mut mine = Layers::new(driver);
                        mine.create(&id, Some("conformance-par-base"))
                            .map_err(verdict_text)?;
                        let path = mine.mount(&id).map_err(verdict_text)?;
                        let shared = fs::read(path.join("shared")).map_err(|e| e.to_string())?;
                        fs::write(path.join("mine"), id.as_bytes()).map_err(|e| e.to_string())?;
                        let back = fs::read(path.join("mine")).map_err(|e| e.to_string())?;
                        mine.unmount(&id).map_err(verdict_text)?;
                        if shared != b"base" || back != id.as_bytes() {
                            return Err(format!("{id} read back wrong content"));
                        }
                        mine.remove(&id).map_err(verdict_text)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("a worker panicked".to_string()),
            })
            .collect()
    });
    ensure!(
        failures.is_empty(),
        "concurrent lifecycles failed: {}",
        failures.join("; ")
    );
    let left: Vec<String> = driver
        .list()
        .map_err(|e| Verdict::Fail(format!("list: {e}")))?
        .into_iter()
        .filter(|id| id.starts_with("conformance-par-") && id != "conformance-par-base")
        .collect();
    ensure!(
        left.is_empty(),
        "layers left after concurrent removal: {left:?}"
    );
    Ok(())
}

fn verdict_text(v: Verdict) -> String {
    match v {
        Verdict::Fail(s) | Verdict::Skip(s) => s,
    }
}
