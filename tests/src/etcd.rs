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
    /// CA, certificate and key when the cluster speaks TLS (clients and peers, with client
    /// certificates required).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    dir: PathBuf,
    /// Bumped by `restart_empty`: a new cluster, not the old one's data.
    token: u32,
}

impl EtcdCluster {
    /// Start `n` members as a new cluster and wait until each accepts connections.
    pub fn start(dir: &Path, n: usize) -> EtcdCluster {
        EtcdCluster::start_tls(dir, n, None)
    }

    /// Same, over TLS with `pki`'s CA and certificate when given.
    pub fn start_tls(dir: &Path, n: usize, pki: Option<&crate::pki::Pki>) -> EtcdCluster {
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
            tls: pki.map(|p| (p.ca.clone(), p.cert.clone(), p.key.clone())),
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
            .map(|m| format!("{}={}://127.0.0.1:{}", m.name, self.scheme(), m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("etcd-{}", self.members[i].name))
    }

    fn spawn(&self, i: usize, state: &str, initial: &str) -> Proc {
        let m = &self.members[i];
        let s = self.scheme();
        let mut cmd = Command::new("etcd");
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", self.data_dir(i).display()))
            .arg(format!(
                "--listen-client-urls={s}://127.0.0.1:{}",
                m.client_port
            ))
            .arg(format!(
                "--advertise-client-urls={s}://127.0.0.1:{}",
                m.client_port
            ))
            .arg(format!(
                "--listen-peer-urls={s}://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls={s}://127.0.0.1:{}",
                m.peer_port
            ));
        // Experiments with larger transactions (etcd's default is 128 operations).
        if let Ok(n) = std::env::var("APPPROXY_E2E_ETCD_MAX_TXN_OPS") {
            cmd.arg(format!("--max-txn-ops={n}"));
        }
        if let Some((ca, cert, key)) = &self.tls {
            for side in ["", "peer-"] {
                cmd.arg(format!("--{side}cert-file={}", cert.display()))
                    .arg(format!("--{side}key-file={}", key.display()))
                    .arg(format!("--{side}trusted-ca-file={}", ca.display()))
                    .arg(format!("--{side}client-cert-auth"));
            }
        }
        cmd.arg(format!("--initial-cluster={initial}"))
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
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect()
    }

    /// A client over the running members (the test's own view; the provider and Traefik
    /// get every member's URL and must cope with dead ones).
    pub async fn client(&self) -> etcd_client::Client {
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some((ca, cert, key)) = &self.tls {
            appproxy_common::tls::install_provider();
            let read = |p: &PathBuf| std::fs::read(p).expect("read pki file");
            opts = opts.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(ca)))
                    .identity(etcd_client::Identity::from_pem(read(cert), read(key))),
            );
        }
        let live: Vec<String> = (self.members.iter())
            .filter(|m| m.proc.is_some())
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
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
        let peer = format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].peer_port
        );
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
