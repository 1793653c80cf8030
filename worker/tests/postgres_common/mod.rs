//! The test PostgreSQL server (tests/postgres/postgres.sh: Debian's
//! postgresql-15 on loopback, password authentication, TLS on), started on
//! first use, and a client of it.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The test server's URL (no password), the test user's password, and the
/// folder of its test CA and client certificate.
pub struct Server {
    pub url: String,
    pub password: String,
    #[allow(dead_code)] // only the TLS test binary reads it
    pub tls_dir: std::path::PathBuf,
}

pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/postgres/postgres.sh");
        let run = |command: &str| {
            let out = Command::new("bash")
                .arg(&script)
                .arg(command)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "postgres.sh {command}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run("start");
        let env = run("env");
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} in {env}"))
                .to_string()
        };
        Server {
            url: var("TICKFLOW_TEST_PG_URL"),
            password: var("TICKFLOW_TEST_PG_PASSWORD"),
            tls_dir: var("TICKFLOW_TEST_PG_TLS_DIR").into(),
        }
    })
}

pub fn client() -> postgres::Client {
    let s = server();
    let mut config: postgres::Config = s.url.parse().unwrap();
    config.password(&s.password);
    config.connect(postgres::NoTls).unwrap()
}
