//! Hosts: one Linux network namespace per node, one for the clients, and one holding a
//! bridge that joins them through veth pairs. Built with `ip` (iproute2); partitions and
//! packet loss with `iptables` inside each node's namespace (two chains, `JPART` and
//! `JLOSS`, jumped to from `INPUT`). The clients' namespace is never cut.
//!
//! Names: `cjp<pid>-br`, `cjp<pid>-c`, `cjp<pid>-n<i>` (the harness's pid makes them
//! unique, so parallel runs cannot collide). Every address lives inside these
//! namespaces (10.77.0.0/24), so runs do not share addresses either. [`Net`] deletes its
//! namespaces when dropped (deleting a namespace deletes its veths and rules);
//! [`cleanup_leftovers`] removes those of harness processes that no longer exist.

use std::process::Command;

/// Prefix of every namespace the harness creates.
pub const PREFIX: &str = "cjp";
/// The client port of every node.
pub const CLIENT_PORT: u16 = 2281;
/// The peer port of every node.
pub const PEER_PORT: u16 = 2381;

/// Runs a command; an error carries its stderr.
pub fn run(args: &[&str]) -> Result<String, String> {
    let (prog, rest) = args.split_first().ok_or("empty command")?;
    let out = Command::new(prog)
        .args(rest)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        || Command::new(prog)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

/// Checks for root, `ip` and `iptables`; installs iptables with apt-get when allowed.
pub fn check_tools(install: bool) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "the harness needs root: it creates network namespaces (`ip netns add`) \
                    and iptables rules; run it as root (CI does)"
                .into(),
        );
    }
    if !have("ip") {
        return Err("`ip` (iproute2) is missing: apt-get install -y iproute2".into());
    }
    if !have("iptables") {
        if !install {
            return Err(
                "`iptables` is missing: apt-get install -y iptables (or pass \
                        --install to let the harness do it)"
                    .into(),
            );
        }
        eprintln!("jepsen: iptables is missing; installing it with apt-get");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "iptables"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok || !have("iptables") {
            return Err(
                "could not install iptables (apt-get install -y iptables failed); partitions \
                 and packet loss need it"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Deletes namespaces (and kills their processes) left by harness runs whose process
/// is gone. Returns the names removed.
pub fn cleanup_leftovers() -> Vec<String> {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = run(&["ip", "netns", "pids", name]) {
            for p in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let pid = nix::unistd::Pid::from_raw(p);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        if run(&["ip", "netns", "del", name]).is_ok() {
            removed.push(name.to_string());
        }
    }
    removed
}

/// The namespaces of one run.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    nodes: usize,
    created: Vec<String>,
}

impl Net {
    pub fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }
    pub fn client_ns(&self) -> String {
        format!("{}-c", self.prefix)
    }
    /// Node ids are 1..=n.
    pub fn node_ns(&self, id: usize) -> String {
        format!("{}-n{id}", self.prefix)
    }
    pub fn node_ip(id: usize) -> String {
        format!("10.77.0.{id}")
    }
    pub fn client_ip() -> &'static str {
        "10.77.0.100"
    }
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Creates the bridge, the clients' namespace and `nodes` node namespaces.
    pub fn create(nodes: usize) -> Result<Net, String> {
        let mut net = Net {
            prefix: format!("{PREFIX}{}", std::process::id()),
            nodes,
            created: Vec::new(),
        };
        // On error the partial set is deleted by Drop.
        net.build()?;
        Ok(net)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        run(&["ip", "netns", "add", name])?;
        self.created.push(name.to_string());
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A veth from the bridge to `ns`, where it is `eth0` with address `ip`.
    fn attach(&self, ns: &str, port: &str, ip: &str) -> Result<(), String> {
        let br = self.bridge_ns();
        run(&[
            "ip", "-n", &br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ])?;
        run(&["ip", "-n", &br, "link", "set", port, "master", "br0", "up"])?;
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn build(&mut self) -> Result<(), String> {
        let br = self.bridge_ns();
        self.add_ns(&br)?;
        run(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &br, "link", "set", "br0", "up"])?;
        let c = self.client_ns();
        self.add_ns(&c)?;
        self.attach(&c, "vc", Net::client_ip())?;
        for id in 1..=self.nodes {
            let ns = self.node_ns(id);
            self.add_ns(&ns)?;
            self.attach(&ns, &format!("vn{id}"), &Net::node_ip(id))?;
            for chain in ["JPART", "JLOSS"] {
                run(&["ip", "netns", "exec", &ns, "iptables", "-N", chain])?;
                run(&[
                    "ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-j", chain,
                ])?;
            }
        }
        Ok(())
    }

    fn iptables(&self, id: usize, args: &[&str]) -> Result<(), String> {
        let ns = self.node_ns(id);
        let mut full = vec!["ip", "netns", "exec", &ns, "iptables"];
        full.extend_from_slice(args);
        run(&full).map(|_| ())
    }

    /// Cuts the links between these pairs of nodes (both directions), replacing any
    /// earlier partition.
    pub fn partition(&self, cut: &[(usize, usize)]) -> Result<(), String> {
        self.heal_partition()?;
        for &(a, b) in cut {
            self.iptables(a, &["-A", "JPART", "-s", &Net::node_ip(b), "-j", "DROP"])?;
            self.iptables(b, &["-A", "JPART", "-s", &Net::node_ip(a), "-j", "DROP"])?;
        }
        Ok(())
    }

    pub fn heal_partition(&self) -> Result<(), String> {
        for id in 1..=self.nodes {
            self.iptables(id, &["-F", "JPART"])?;
        }
        Ok(())
    }

    /// Drops this fraction of the packets between nodes (not client traffic).
    pub fn set_loss(&self, probability: f64) -> Result<(), String> {
        self.heal_loss()?;
        let p = format!("{probability:.3}");
        for id in 1..=self.nodes {
            for other in (1..=self.nodes).filter(|o| *o != id) {
                self.iptables(
                    id,
                    &[
                        "-A",
                        "JLOSS",
                        "-s",
                        &Net::node_ip(other),
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    pub fn heal_loss(&self) -> Result<(), String> {
        for id in 1..=self.nodes {
            self.iptables(id, &["-F", "JLOSS"])?;
        }
        Ok(())
    }

    /// Deletes every namespace of the run (their veths and rules go with them).
    pub fn teardown(&mut self) {
        for name in self.created.drain(..).rev() {
            if let Err(e) = run(&["ip", "netns", "del", &name]) {
                eprintln!("jepsen: cleanup: {e}");
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Moves the calling thread (and the threads it starts later) into a namespace. Call
/// it before the async runtime starts its threads.
pub fn enter(ns: &str) -> Result<(), String> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .map_err(|e| format!("cannot open namespace {ns}: {e}"))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("cannot enter namespace {ns}: {e}"))
}
