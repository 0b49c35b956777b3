//! Nodes in network namespaces: links cut and flapped, latency and loss (iptables
//! `statistic` drops and an NFQUEUE delayer).

use super::*;

/// Runs `pgquorum node --config <config>` inside network namespace `ns`
/// (`ip netns exec` execs the binary, so the pid is pgquorum's).
pub fn spawn_node_in(ns: &str, config: &Path, log: &Path) -> std::process::Child {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let err = f.try_clone().expect("clone log");
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, BIN, "node", "--config"])
        .arg(config)
        .env_remove("PGQUORUM_LOG")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(f)
        .stderr(err)
        // `ip netns exec` execs the node: this is the node's own process group.
        .process_group(0)
        .spawn()
        .expect("spawn pgquorum in a namespace")
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces for the nodes, wired to a bridge in a further namespace by veth
/// pairs, plus one veth from the test's own namespace to the bridge so the test
/// (clients, observer) reaches every node. All addresses are in a /24 private to
/// this test; deleting the namespaces removes every link. Needs root.
pub struct NetNs {
    tag: String,
    n: u64,
    subnet: String,
}

impl NetNs {
    pub fn new(n: u64) -> NetNs {
        let pid = std::process::id();
        let tag = format!("pg{:x}", pid % 0xfffff);
        // One subnet per test process; the partition test uses 10.77.0.0/24 only
        // inside its own namespaces.
        let subnet = format!("10.{}.{}", 100 + (pid >> 8) % 100, pid % 250);
        let net = NetNs { tag, n, subnet };
        let sw = net.switch();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for id in 1..=n {
            let ns = net.ns(id);
            let (a, b) = (format!("{}v{id}a", net.tag), format!("{}v{id}b", net.tag));
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &ns]);
            ip(&["link", "set", &b, "netns", &sw]);
            ip(&["-n", &sw, "link", "set", &b, "master", "br0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(id)),
                "dev",
                &a,
            ]);
            ip(&["-n", &ns, "link", "set", &a, "up"]);
        }
        // The test's side.
        let (h, hb) = (format!("{}ha", net.tag), format!("{}hb", net.tag));
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &hb]);
        ip(&["link", "set", &hb, "netns", &sw]);
        ip(&["-n", &sw, "link", "set", &hb, "master", "br0", "up"]);
        ip(&["addr", "add", &format!("{}.254/24", net.subnet), "dev", &h]);
        // Secondary: used only when bound to, by the observer.
        ip(&["addr", "add", &format!("{}.253/24", net.subnet), "dev", &h]);
        ip(&["link", "set", &h, "up"]);
        net
    }

    fn switch(&self) -> String {
        format!("{}s", self.tag)
    }

    pub fn ns(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    pub fn addr(&self, id: u64) -> String {
        format!("{}.{id}", self.subnet)
    }

    /// The test's own addresses (its connections come from these).
    pub fn test_addrs(&self) -> [String; 2] {
        [
            format!("{}.254", self.subnet),
            format!("{}.253", self.subnet),
        ]
    }

    /// The test namespace's second address, for the write observer only.
    pub fn observer_addr(&self) -> std::net::Ipv4Addr {
        format!("{}.253", self.subnet).parse().expect("address")
    }

    fn dev(&self, id: u64) -> String {
        format!("{}v{id}a", self.tag)
    }

    /// Adds latency and loss to everything node `id` sends (Raft, replication,
    /// answers to clients), except to the observer, until the returned guard drops.
    /// `tc netem` would be the usual tool, but this kernel has no `sch_netem`: loss is
    /// an iptables `statistic` match dropping packets at random, and latency holds
    /// each packet in userspace (NFQUEUE) for `delay` before letting it go, in order.
    /// Applied to every node, each link gets `delay` one way and `loss_pct` per packet
    /// per direction.
    pub fn degrade(&self, id: u64, delay: Duration, loss_pct: u32) -> Degraded {
        let ns = self.ns(id);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (ns, stop) = (ns.clone(), stop.clone());
            std::thread::spawn(move || delayer(&ns, delay, &stop, bound_tx))
        };
        bound_rx
            .recv()
            .expect("delayer thread")
            .unwrap_or_else(|e| panic!("NFQUEUE in namespace {ns}: {e}"));
        let dev = self.dev(id);
        let observer = format!("{}/32", self.observer_addr());
        let mut rules = vec![vec!["-d", &observer, "-j", "RETURN"]];
        let probability = format!("{:.4}", f64::from(loss_pct) / 100.0);
        if loss_pct > 0 {
            rules.push(vec![
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ]);
        }
        rules.push(vec!["-j", "NFQUEUE", "--queue-num", "0"]);
        let rules: Vec<Vec<String>> = rules
            .into_iter()
            .map(|r| {
                ["-o", dev.as_str()]
                    .into_iter()
                    .chain(r)
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        for r in &rules {
            iptables(&ns, "-A", r);
        }
        Degraded {
            ns,
            rules,
            stop,
            thread: Some(thread),
        }
    }

    /// Takes node `id`'s link to the bridge down (or up): it is cut off from
    /// everyone, the test's own namespace included.
    pub fn set_link(&self, id: u64, up: bool) {
        let b = format!("{}v{id}b", self.tag);
        ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &b,
            if up { "up" } else { "down" },
        ]);
    }

    /// Cuts (or heals) all traffic between nodes `a` and `b`, both ways, leaving
    /// each reachable from the test's namespace (its clients stay on both sides).
    pub fn cut(&self, a: u64, b: u64, cut: bool) {
        for (from, to) in [(a, b), (b, a)] {
            let verb = if cut { "add" } else { "del" };
            ip(&[
                "-n",
                &self.ns(from),
                "route",
                verb,
                "blackhole",
                &format!("{}/32", self.addr(to)),
            ]);
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for id in 1..=self.n {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.ns(id)])
                .status();
        }
        // Deleting the switch namespace deletes the peer of our veth, and so our end.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.switch()])
            .status();
    }
}

fn iptables(ns: &str, verb: &str, rule: &[String]) {
    // The legacy backend: iptables-nft would need nft's `queue` expression, which this
    // kernel lacks (NFQUEUE is there as an xtables target).
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "iptables-legacy", "-w", verb, "OUTPUT"])
        .args(rule)
        .output()
        .expect("run iptables-legacy (package iptables)");
    assert!(
        out.status.success(),
        "iptables-legacy {verb} OUTPUT {} in {ns}: {}",
        rule.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Latency and loss on one node's link, removed on drop (see [`NetNs::degrade`]).
pub struct Degraded {
    ns: String,
    rules: Vec<Vec<String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Degraded {
    fn drop(&mut self) {
        // Rules first, so nothing new is queued; then the delayer lets the held
        // packets go and stops.
        for r in self.rules.iter().rev() {
            iptables(&self.ns, "-D", r);
        }
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs on its own thread, moved into namespace `ns`: receives every packet queued to
/// NFQUEUE 0 there and accepts it `delay` after it arrived, in arrival order. Reports
/// on `bound` once the queue is bound (or why not).
fn delayer(
    ns: &str,
    delay: Duration,
    stop: &std::sync::atomic::AtomicBool,
    bound: std::sync::mpsc::Sender<Result<(), String>>,
) {
    use std::os::fd::AsRawFd as _;
    let setup = || -> Result<nfq::Queue, String> {
        let f = fs::File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string())?;
        // SAFETY: setns(2) on this thread only; the fd is open for the call.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let mut q = nfq::Queue::open().map_err(|e| format!("open: {e}"))?;
        q.bind(0).map_err(|e| format!("bind: {e}"))?;
        // Metadata only: the verdict never changes a packet.
        q.set_copy_range(0, 0).map_err(|e| e.to_string())?;
        q.set_queue_max_len(0, 65_536).map_err(|e| e.to_string())?;
        q.set_recv_gso(0, true).map_err(|e| e.to_string())?;
        q.set_nonblocking(true);
        Ok(q)
    };
    let mut q = match setup() {
        Ok(q) => {
            let _ = bound.send(Ok(()));
            q
        }
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let mut held: std::collections::VecDeque<(Instant, nfq::Message)> = Default::default();
    loop {
        let stopping = stop.load(std::sync::atomic::Ordering::SeqCst);
        let mut idle = true;
        loop {
            match q.recv() {
                Ok(m) => {
                    held.push_back((Instant::now() + delay, m));
                    idle = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("NFQUEUE receive in {ns}: {e}"),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| stopping || *due <= now) {
            let (_, m) = held.pop_front().expect("front");
            q.verdict(m).expect("NFQUEUE verdict");
            idle = false;
        }
        if stopping && held.is_empty() && idle {
            return;
        }
        if idle {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}
