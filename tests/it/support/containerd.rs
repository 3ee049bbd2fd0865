//! A real containerd (Debian's `containerd` package) with its own root,
//! state and socket under a temporary directory, stopped by PID; driven
//! with `ctr`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd (the CRI plugin off: only the content store and
    /// the resolver are used) and waits for its socket.
    pub fn start() -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let config = format!(
            "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{r}/c.sock\"\n[ttrpc]\n  address = \"{r}/c.sock.ttrpc\"\n[debug]\n  address = \"{r}/debug.sock\"\n",
            r = root.display()
        );
        std::fs::write(root.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(root.join("log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("containerd is installed (scripts/install-deps)");
        let containerd = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !containerd.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                std::fs::read_to_string(containerd.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        containerd
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// `ctr --address SOCKET content fetch --hosts-dir DIR --all-platforms
    /// REFERENCE`: every platform of an image into the content store, the
    /// registry hosts as `DIR` says.
    pub fn fetch_all_platforms(&self, hosts_dir: &Path, reference: &str) -> Output {
        self.ctr(&[
            "content",
            "fetch",
            "--hosts-dir",
            &hosts_dir.display().to_string(),
            "--all-platforms",
            reference,
        ])
    }

    /// `ctr --address SOCKET ARGS…`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("ctr is installed")
    }

    /// The command [`Containerd::ctr`] runs, for one that runs on (`ctr run`).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(self.socket()).args(args);
        command
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // By PID, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
