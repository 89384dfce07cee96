//! `EtcdCluster`: one or more etcd members on loopback ports for one test (a single member is
//! a cluster of one), with the faults the HA tests need: kill a member, restart it, replace
//! it with an empty data directory (member remove + add, as an operator does), and restart
//! the whole cluster empty.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::procs::{Proc, free_port, wait_listening};

pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    proc: Option<Proc>,
}

pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    dir: PathBuf,
    /// Bumped by `restart_empty`: a new cluster, not the old one's data.
    token: u32,
}

impl EtcdCluster {
    /// Start `n` members as a new cluster and wait until each accepts connections.
    pub fn start(dir: &Path, n: usize) -> EtcdCluster {
        let members = (0..n)
            .map(|i| EtcdMember {
                name: format!("e{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                proc: None,
            })
            .collect();
        let mut c = EtcdCluster {
            members,
            dir: dir.to_path_buf(),
            token: 0,
        };
        c.start_all_new();
        c
    }

    fn start_all_new(&mut self) {
        let initial = self.initial_cluster();
        for i in 0..self.members.len() {
            let p = self.spawn(i, "new", &initial);
            self.members[i].proc = Some(p);
        }
        for i in 0..self.members.len() {
            self.wait(i);
        }
    }

    /// `--initial-cluster` naming every member.
    fn initial_cluster(&self) -> String {
        (self.members.iter())
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("etcd-{}", self.members[i].name))
    }

    fn spawn(&self, i: usize, state: &str, initial: &str) -> Proc {
        let m = &self.members[i];
        let mut cmd = Command::new("etcd");
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", self.data_dir(i).display()))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{}",
                m.client_port
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                m.client_port
            ))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!("--initial-cluster={initial}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token=e2e-{}", self.token))
            .arg("--log-level=warn")
            .arg("--unsafe-no-fsync");
        Proc::spawn(&format!("etcd-{}", m.name), cmd, &self.dir)
    }

    fn wait(&mut self, i: usize) {
        let port = self.members[i].client_port;
        if let Some(p) = self.members[i].proc.as_mut() {
            wait_listening(port, Duration::from_secs(20), p);
        }
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (self.members.iter())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// A client over the running members (the test's own view; the provider and Traefik
    /// get every member's URL and must cope with dead ones).
    pub async fn client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        let live: Vec<String> = (self.members.iter())
            .filter(|m| m.proc.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect();
        etcd_client::Client::connect(live, Some(opts))
            .await
            .expect("etcd connect")
    }

    /// The index of the member that leads raft now.
    pub async fn raft_leader(&self) -> usize {
        let mut c = self.client().await;
        let leader = c.status().await.expect("etcd status").leader();
        let list = c.member_list().await.expect("member list");
        let m = (list.members().iter())
            .find(|m| m.id() == leader)
            .expect("the raft leader is a member");
        (self.members.iter())
            .position(|x| m.name() == x.name)
            .expect("a member of ours")
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    /// Start member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        let p = self.spawn(i, "existing", &self.initial_cluster());
        self.members[i].proc = Some(p);
        self.wait(i);
    }

    /// Replace the (killed) member `i` by an empty one, as an operator does after losing its
    /// disk: remove it from the cluster, wipe its directory, add it back and start it; it
    /// catches up from the others.
    pub async fn replace(&mut self, i: usize) {
        self.kill(i);
        let _ = std::fs::remove_dir_all(self.data_dir(i));
        let peer = format!("http://127.0.0.1:{}", self.members[i].peer_port);
        let mut c = self.client().await;
        let list = c.member_list().await.expect("member list");
        let old = list
            .members()
            .iter()
            .find(|m| m.peer_urls().contains(&peer))
            .map(|m| m.id());
        if let Some(id) = old {
            c.member_remove(id).await.expect("member remove");
        }
        // etcd refuses a new voting member until the remaining ones have been connected for a
        // while after the removal ("unhealthy cluster"): retry, bounded, as an operator would.
        let mut tries = 0;
        while let Err(e) = c.member_add([peer.clone()], None).await {
            tries += 1;
            assert!(tries < 60, "member add: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let p = self.spawn(i, "existing", &self.initial_cluster());
        self.members[i].proc = Some(p);
        self.wait(i);
    }

    /// Kill every member, wipe their data and start a new, empty cluster on the same ports.
    pub fn restart_empty(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
            let _ = std::fs::remove_dir_all(self.data_dir(i));
        }
        self.token += 1;
        self.start_all_new();
    }

    /// Whether a write is accepted now (within `limit`).
    pub async fn writable(&self, limit: Duration) -> bool {
        let probe = async {
            let mut c = self.client().await;
            c.put("e2e-probe", "x", None).await.is_ok()
        };
        tokio::time::timeout(limit, probe).await.unwrap_or(false)
    }
}
