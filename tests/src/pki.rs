//! A private PKI for one test, made with the `openssl` command: a CA, a certificate for
//! `127.0.0.1`/`localhost`/`::1` that every server of the stack presents (serverAuth and
//! clientAuth, so the same pair is also the client certificate for mutual TLS), and a second,
//! unrelated CA with its own server certificate, for the "wrong CA" cases.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub struct Pki {
    /// The CA every client of the stack trusts (PEM).
    pub ca: PathBuf,
    /// Certificate and key the stack's servers present (and clients use for mutual TLS).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A CA that signed nothing the stack serves.
    pub other_ca: PathBuf,
    /// A server certificate from `other_ca` (a server the stack's clients must refuse).
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
}

/// `openssl req` arguments for a new P-256 key without a passphrase.
pub const NEW_EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed EC P-256 CA named `name` in `dir`: `<name>.pem`, `<name>.key`.
fn ca(dir: &Path, name: &str) {
    openssl(
        &[
            &["req", "-x509"][..],
            &NEW_EC_KEY,
            &[
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN=appproxy test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
        dir,
    );
}

/// A leaf for the loopback names, signed by CA `ca`: `<name>.pem`, `<name>.key`.
fn leaf(dir: &Path, ca: &str, name: &str) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth,clientAuth\n\
         subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n",
    )
    .expect("write ext");
    openssl(
        &[
            &["req", "-new"][..],
            &NEW_EC_KEY,
            &[
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-extfile",
            &format!("{name}.ext"),
        ],
        dir,
    );
}

impl Pki {
    /// Make the PKI under `dir/pki`.
    pub fn new(dir: &Path) -> Pki {
        let d = dir.join("pki");
        std::fs::create_dir_all(&d).expect("pki dir");
        ca(&d, "ca");
        leaf(&d, "ca", "server");
        ca(&d, "other-ca");
        leaf(&d, "other-ca", "other-server");
        Pki {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            other_ca: d.join("other-ca.pem"),
            other_cert: d.join("other-server.pem"),
            other_key: d.join("other-server.key"),
        }
    }

    /// A reqwest client that trusts only this PKI's CA.
    pub fn http(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.ca).expect("read ca");
        crate::client_builder()
            .timeout(std::time::Duration::from_secs(10))
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("ca pem"))
            .build()
            .expect("client")
    }
}
