//! The write observer: which node accepted a write when, to catch two writable
//! primaries at once.

use super::*;

/// Per node: the windows (before, after) of each write attempt that succeeded.
pub type Windows = BTreeMap<u64, Vec<(Instant, Instant)>>;
type NodeWindows = (u64, Vec<(Instant, Instant)>);

/// Records, per node, when it was seen accepting writes, polling all nodes
/// concurrently. With network namespaces it connects from the observer's own
/// address, which [`NetNs::degrade`] leaves alone: a delayed answer would widen the
/// window and could show an overlap that never happened.
pub struct WriteObserver {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<NodeWindows>>,
}

impl WriteObserver {
    pub fn start(c: &PgCluster) -> Self {
        let from = c.net.as_ref().map(|n| n.observer_addr());
        let (stop, rx) = tokio::sync::watch::channel(false);
        let tasks = c
            .ids()
            .into_iter()
            .map(|id| {
                let conninfo = c.conninfo(id);
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !*rx.borrow() {
                        // The write was accepted at some instant inside [before, after].
                        let before = Instant::now();
                        let ok = is_writable_from(&conninfo, from).await;
                        let after = Instant::now();
                        if ok {
                            seen.push((before, after));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    (id, seen)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops polling; returns each node's writable windows.
    pub async fn finish(self) -> Windows {
        let _ = self.stop.send(true);
        let mut out = BTreeMap::new();
        for t in self.tasks {
            let (id, seen) = t.await.expect("observer task");
            out.insert(id, seen);
        }
        out
    }
}

/// The last instant node `a` was seen writable and the first instant `b` was, if both.
pub fn last_and_first(seen: &Windows, a: u64, b: u64) -> anyhow::Result<(Instant, Instant)> {
    let last_a = seen
        .get(&a)
        .and_then(|v| v.last())
        .map(|w| w.1)
        .ok_or_else(|| anyhow!("node {a} was never seen writable"))?;
    let first_b = seen
        .get(&b)
        .and_then(|v| v.first())
        .map(|w| w.0)
        .ok_or_else(|| anyhow!("node {b} was never seen writable"))?;
    Ok((last_a, first_b))
}
