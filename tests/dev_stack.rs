//! scripts/dev-stack.sh from a checkout other users cannot enter (a 0700 directory, as
//! root's home is on Debian) whose path has a space: PostgreSQL, which runs as its own user,
//! keeps its files where that user can reach them, and `status`, `down` and `clean` find
//! them. Kafka is the suite's broker (KAFKA_BROKERS), so no dev_broker is built here.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A copy of the script in `<tmp>/home <id>/my checkout/scripts/`, `home <id>` mode 0700.
struct Checkout {
    home: PathBuf,
    root: PathBuf,
}

impl Checkout {
    fn new() -> Self {
        let home = std::env::temp_dir().join(format!("home {}", support::unique_id()));
        let root = home.join("my checkout");
        std::fs::create_dir_all(root.join("scripts")).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::copy(
            support::repo_root().join("scripts/dev-stack.sh"),
            root.join("scripts/dev-stack.sh"),
        )
        .unwrap();
        Checkout { home, root }
    }

    fn stack(&self, command: &str) -> Output {
        Command::new(self.root.join("scripts/dev-stack.sh"))
            .arg(command)
            .env("KAFKA_BROKERS", support::stack_var("KAFKA_BROKERS"))
            .env_remove("SECKILL_DEV_DIR")
            .output()
            .unwrap()
    }

    fn env_var(&self, name: &str) -> String {
        let output = self.stack("env");
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        text.lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| support::shell_unquote(value))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let _ = self.stack("clean");
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `files <path>` of one service in `status` output.
fn files_of(status: &str, service: &str) -> PathBuf {
    let line = status
        .lines()
        .find(|line| line.starts_with(service))
        .unwrap_or_else(|| panic!("no {service} line in:\n{status}"));
    let after = line
        .split_once("files ")
        .unwrap_or_else(|| panic!("no files in {line}"))
        .1;
    PathBuf::from(after.split(", log").next().unwrap())
}

#[tokio::test]
async fn a_checkout_under_a_private_directory_with_a_space_runs_the_stack_and_cleans_up() {
    let checkout = Checkout::new();
    let up = checkout.stack("up");
    assert!(up.status.success(), "up failed:\n{}", text(&up));

    let status = checkout.stack("status");
    let status_text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{}", text(&status));
    assert!(status_text.contains("redis     running"), "{status_text}");
    assert!(status_text.contains("postgres  running"), "{status_text}");
    let pg_home = files_of(&status_text, "postgres");
    assert!(
        !pg_home.starts_with(&checkout.home),
        "PostgreSQL's files must live where its user can reach them, not in {}",
        pg_home.display()
    );
    assert!(pg_home.join("data/PG_VERSION").exists(), "{status_text}");
    // The server's socket fits a Unix socket path (sun_path is 108 bytes with its NUL).
    let socket = std::fs::read_dir(pg_home.join("sock"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with(".s.PGSQL.")
                    && !n.to_string_lossy().ends_with(".lock")
            })
        })
        .expect("a PostgreSQL socket");
    assert!(socket.as_os_str().len() < 108, "{}", socket.display());
    // Redis keeps its files in the checkout (it runs as us).
    assert!(files_of(&status_text, "redis").starts_with(&checkout.root));

    // Both servers answer at the addresses `env` gives.
    let database_url = checkout.env_var("DATABASE_URL");
    assert_ne!(
        database_url,
        support::stack_var("DATABASE_URL"),
        "a stack of its own"
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {database_url}: {e}"));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
    pool.close().await;
    let redis_url = checkout.env_var("REDIS_URL");
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut redis).await.unwrap();
    assert_eq!(pong, "PONG");

    // A second `up` is a no-op that finds both running.
    let again = checkout.stack("up");
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("postgres already running"));

    let down = checkout.stack("down");
    assert!(down.status.success(), "{}", text(&down));
    let stopped = checkout.stack("status");
    assert!(!stopped.status.success(), "{}", text(&stopped));
    assert!(pg_home.exists(), "down keeps the data");

    let clean = checkout.stack("clean");
    assert!(clean.status.success(), "{}", text(&clean));
    assert!(!pg_home.exists(), "clean leaves {}", pg_home.display());
    assert!(!checkout.root.join(".dev").exists());
    // The folder is still the user's own, untouched.
    let mode = std::fs::metadata(&checkout.home)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn each_checkout_has_its_own_postgres_files() {
    let first = Checkout::new();
    let second = Checkout::new();
    let home_of = |checkout: &Checkout| -> PathBuf {
        let status = checkout.stack("status");
        files_of(&String::from_utf8_lossy(&status.stdout), "postgres")
    };
    let (a, b) = (home_of(&first), home_of(&second));
    assert_ne!(a, b);
    assert_eq!(
        a.parent(),
        b.parent(),
        "one folder of stacks: {}",
        a.display()
    );
}
